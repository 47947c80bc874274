"""The tests import the library as installed (``pip install -e ".[test]"``, see scripts/setup.sh) and their
helper modules (lrp_models, pipeline_fixtures) from this folder, which pytest's default ``prepend`` import
mode puts on the path: no path patching here."""
