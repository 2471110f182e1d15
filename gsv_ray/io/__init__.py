"""Reading and writing GPT-SoVITS files, safely and byte-format faithful."""
