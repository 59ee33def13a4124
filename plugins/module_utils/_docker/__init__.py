# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Docker: the daemon's API, `docker save` streams read, `docker load` streams written; imports _format, _storage, _codecs."""
