"""Conversion of source images (OCI layouts, docker archives, directories) into imagefs
images; `builder.convert.convert` is the service function the CLI calls."""
