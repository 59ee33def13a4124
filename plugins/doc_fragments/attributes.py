# Copyright (c) dogestry developers
# MIT License (see LICENSE)

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
"""

    ACTIONGROUP_DOGESTRY = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/dogestry.dogestry.dogestry) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - dogestry.dogestry.dogestry
"""
