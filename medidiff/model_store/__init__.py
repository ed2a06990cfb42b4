"""Model storage: finding models by name or folder (built-in, user folder, paths) and importing MONAI bundles."""
