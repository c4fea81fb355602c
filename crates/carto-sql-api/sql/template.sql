-- What every user database starts with (installed once in the template database that user
-- databases are created from): PostGIS, and the `cartodb` schema of CARTO helpers, owned by
-- the superuser so users can call but not replace them.
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE SCHEMA cartodb;
GRANT USAGE ON SCHEMA cartodb TO PUBLIC;
CREATE FUNCTION cartodb._CDB_UserQuotaInBytes() RETURNS int8
    LANGUAGE sql IMMUTABLE AS 'SELECT 0::int8';
CREATE FUNCTION cartodb.CDB_UserDataSize(schema_name text) RETURNS int8
    LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 / 2
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = schema_name AND c.relkind IN ('r', 'p', 'm')
      AND c.relname NOT IN ('spatial_ref_sys', 'cdb_tablemetadata')
$$;
