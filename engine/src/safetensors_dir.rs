//! HF safetensors model directories as a TensorSource (OWNER: helper G).
