"""What a served app does once at startup (api/__init__.py)."""

from __future__ import annotations

import gc


def test_a_served_app_leaves_its_startup_objects_out_of_full_collections() -> None:
    from api import create_app

    gc.unfreeze()
    try:
        create_app({"TESTING": True})
        assert gc.get_freeze_count() == 0  # tests build an app each: nothing kept
        create_app()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
