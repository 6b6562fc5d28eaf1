"""Deprecated home of sparknet's S3 access: it moved to :mod:`sparknet.io.s3`."""
import warnings

from sparknet.io.s3 import *  # noqa: F403 - the old names, for a release
from sparknet.io.s3 import S3ObjectReader, S3Options, list_keys, open_s3, read_s3  # noqa: F401

warnings.warn("sparknet.data.s3 moved to sparknet.io.s3; import it from there",
              DeprecationWarning, stacklevel=2)
