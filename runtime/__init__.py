"""mudelta.runtime"""
