"""carto-python's CopySQLClient with its defaults, as its users call it (one benchmark contender).

    carto_python_copy.py from BASE_URL API_KEY SQL FILE
    carto_python_copy.py to   BASE_URL API_KEY SQL FILE
"""

import sys
import warnings

from carto.auth import APIKeyAuthClient
from carto.sql import CopySQLClient

warnings.simplefilter("ignore")  # it warns about plain http, which is all a local server has

direction, base_url, api_key, sql, path = sys.argv[1:6]
client = CopySQLClient(APIKeyAuthClient(base_url, api_key))
if direction == "from":
    result = client.copyfrom_file_path(sql, path)
    print(result["total_rows"])
else:
    client.copyto_file_path(sql, path)
