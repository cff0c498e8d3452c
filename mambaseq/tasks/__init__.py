"""Task code: what turns files into tensors and models into results, per modality."""
