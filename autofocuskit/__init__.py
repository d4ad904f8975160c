"""autofocuskit: what the scripts at the top level share, one job per module. What a
microscope's computer needs imports no torch, and is here by name:

    from autofocuskit import FocusPredictor, FocusSettings, focus_loop
    from autofocuskit.microscope import AutofocusEngine, autofocus      # pymmcore-plus

Names are imported when first used, so that `import autofocuskit` costs nothing.
"""
import importlib

# the deploy side, by the module that defines each name; none of these modules imports torch
DEPLOY_API = {
    "FocusPredictor": "predictor", "FocusEstimate": "predictor", "FocusError": "predictor",
    "focus_loop": "loop", "FocusSettings": "loop", "FocusResult": "loop", "STOP_REASONS": "loop",
    "ErrorModel": "error_model", "ModelMetadata": "exported_model", "ModelFileError": "exported_model",
    "open_session": "exported_model",
}
__all__ = sorted(DEPLOY_API)


def __getattr__(name: str):
    if name in DEPLOY_API:
        return getattr(importlib.import_module(f".{DEPLOY_API[name]}", __name__), name)
    raise AttributeError(f"module 'autofocuskit' has no attribute {name!r}")
