"""Data loaders: classification (nasir.data.classification) and COCO detection (nasir.data.coco)."""
