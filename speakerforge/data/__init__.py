"""Data layer: manifests, audio, features, augmentation, sampling. Imports neither models nor train."""
