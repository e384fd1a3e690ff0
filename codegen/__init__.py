"""mudelta.codegen: render a runnable PyTorch model module with the derived rules baked in."""

from .render import CodegenError, generate, load_module

__all__ = ["CodegenError", "generate", "load_module"]
