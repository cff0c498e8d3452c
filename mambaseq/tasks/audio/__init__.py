"""Raw-audio tasks (codecs, datasets, recipes) arrive with the audio issue."""
