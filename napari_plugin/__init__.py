"""napari-medidiff: the napari plugin of medidiff (reader, writer, sample data, task widgets)."""
