"""The radar example in Python: compute sweeps of a weather radar with numpy, stream them into
a cartodbfied table with carto_rs (binary COPY, no CSV, no file), read them back.

    CARTO_API_URL=https://alice.carto.com/ CARTO_API_KEY=... python examples/python/radar.py [SWEEPS]

Needs carto_rs (`pip install ./crates/carto-py`), numpy and pandas; draws a progress bar if
tqdm is installed. Replaces the table `radar_sweep`.
"""

import os
import sys

import numpy as np
from carto_rs.auth import APIKeyAuthClient
from carto_rs.sql import CopySQLClient, SQLClient

SITE_LON, SITE_LAT = -3.7038, 40.4168  # Madrid
RAYS, BINS = 360, 250  # one ray per degree, 250 bins of 0.5 km


def sweep(n):
    """One sweep as columns: every (ray, bin), its position and reflectivity (NaN: no echo)."""
    azimuth, bin_ = np.meshgrid(np.arange(RAYS, dtype=np.float64), np.arange(1, BINS + 1),
                                indexing="ij")
    range_km = bin_ * 0.5
    theta = np.radians(azimuth)
    # Degrees per km: 1/111.32 north, 1/(111.32 cos lat) east.
    lon = SITE_LON + range_km * np.sin(theta) / (111.32 * np.cos(np.radians(SITE_LAT)))
    lat = SITE_LAT + range_km * np.cos(theta) / 111.32
    # A storm cell drifting with each sweep; below 5 dBZ is no echo (NULL).
    cell = np.clip(np.sin(theta * 3 + n * 0.2) * np.sin(range_km / 40 * np.pi), 0, None)
    dbz = np.round(65 * cell, 1)
    dbz[dbz < 5] = np.nan
    return {
        "sweep": np.full(azimuth.size, n, dtype=np.int32),
        "azimuth": azimuth.ravel(),
        "range_km": range_km.ravel(),
        "reflectivity_dbz": dbz.ravel(),
        "lon": lon.ravel(),
        "lat": lat.ravel(),
    }


def main():
    sweeps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    auth = APIKeyAuthClient(os.environ["CARTO_API_URL"], os.environ["CARTO_API_KEY"])
    sql, copy = SQLClient(auth), CopySQLClient(auth)

    columns = [sweep(n) for n in range(sweeps)]
    grid = {name: np.concatenate([c[name] for c in columns]) for name in columns[0]}
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(grid["sweep"]), unit="rows", unit_scale=True)
    except ImportError:
        bar = None

    sql.send("DROP TABLE IF EXISTS radar_sweep")
    # create=True makes the table from the arrays' types and cartodbfies it; (lon, lat)
    # become the_geom.
    result = copy.copyfrom_arrays(grid, "radar_sweep", create=True, geometry=("lon", "lat"),
                                  progress=bar.update if bar else None)
    if bar:
        bar.close()
    print(f"loaded {result['total_rows']} echoes in {result['time']:.2f} s")

    strongest = copy.copyto_dataframe(
        "SELECT sweep, max(reflectivity_dbz) AS max_dbz, count(reflectivity_dbz) AS echoes, "
        "count(the_geom_webmercator) AS mapped FROM radar_sweep GROUP BY sweep ORDER BY sweep")
    print(strongest.to_string(index=False))


if __name__ == "__main__":
    main()
