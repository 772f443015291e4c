"""Plain builders shared by the test folders (tiny datasets, base-model folders, exports, study runs, CLI
runs). Fixtures live in conftest.py; a test module imports helpers from here, never from another test module."""
