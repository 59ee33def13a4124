# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Minimum versions of the Python libraries the collection uses (pinned in tests/*/constraints.txt)."""

MINIMUM_VERSIONS = {
    "docker": "5.0.0",      # APIClient(version="auto"), load_image(quiet=...)
    "boto3": "1.28.0",      # IfNoneMatch conditional writes need a recent botocore model
    "lz4": "3.1.0",         # lz4.frame.LZ4FrameCompressor/Decompressor streaming API
}
