"""Placeholder until the format modules land (replaced by the I/O work)."""
def load_scan(path, **kw):
    raise NotImplementedError
def save_scan(scan, path, **kw):
    raise NotImplementedError
def detect_format(path):
    raise NotImplementedError
