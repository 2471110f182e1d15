"""Our own GPT-SoVITS models: state_dict keys, shapes and numerics identical to upstream."""
