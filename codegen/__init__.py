"""mudelta.codegen"""
