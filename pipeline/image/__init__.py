"""One image from bytes to the model's input: decoding (CPU, PIL or the GPU's nvJPEG), the model's eval resize and crop, normalisation, and batched crops on any device."""
