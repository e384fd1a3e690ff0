"""mudelta.kernels"""
