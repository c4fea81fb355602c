"""carto_rs's CopySQLClient as a benchmark contender: carto-python's contender script
(carto_python_copy.py, same arguments), run unchanged with carto_rs's modules standing in for
carto-python's, which is the whole migration.

    carto_rs_copy.py from|to BASE_URL API_KEY SQL FILE
"""

import runpy
import sys
from pathlib import Path

import carto_rs
import carto_rs.auth
import carto_rs.exceptions
import carto_rs.sql

sys.modules.update({
    "carto": carto_rs,
    "carto.auth": carto_rs.auth,
    "carto.exceptions": carto_rs.exceptions,
    "carto.sql": carto_rs.sql,
})
runpy.run_path(str(Path(__file__).with_name("carto_python_copy.py")), run_name="__main__")
