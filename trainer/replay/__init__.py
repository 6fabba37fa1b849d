"""The replay database (contract section 1): schema, blob codecs, and the trainer's reader."""
