"""builtin presets"""
