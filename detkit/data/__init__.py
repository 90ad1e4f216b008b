"""Data: image reading, annotation records, VOC conversion, dataset files."""
