"""The FUSE side of imagefs: the adapter from kernel requests to the filesystem view, the
mount lifecycle, and prefetch.

mfusepy loads libfuse once, when it is first imported, and prefers libfuse 2 whenever the
dynamic linker's cache lists it; imagefs needs libfuse 3 (fuse_config: kernel_cache,
timeouts, use_ino; init negotiation of max_write). The choice is made here, before any
module of this package can import mfusepy.
"""

import os

if not os.environ.get("FUSE_LIBRARY_PATH"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
