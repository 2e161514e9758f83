"""Training pipeline for the shipped models: corpus, pretraining, draft distillation, proposal heads.
Nothing in decoding/ or the inference side of models/ imports it."""
