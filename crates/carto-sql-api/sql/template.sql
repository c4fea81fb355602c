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

-- ---------------------------------------------------------------------------------------------
-- CARTO table conventions (spec §10). See docs/cartodb.md for what is done and why.
--
-- Everything below runs as the caller (SECURITY INVOKER), so a user can only cartodbfy tables
-- it owns, except the two functions that write `cartodb.CDB_TableMetadata`, which only the
-- superuser that owns this schema may write.
-- ---------------------------------------------------------------------------------------------

-- When each cartodbfied table last changed (read by caches and clients).
CREATE TABLE cartodb.CDB_TableMetadata (
    tabname    regclass PRIMARY KEY,
    updated_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON cartodb.CDB_TableMetadata TO PUBLIC;

-- `g` in web mercator: SRID 3857 as is; otherwise in 4326 (SRID 0 taken as 4326), clipped to
-- the band web mercator can show when it leaves it; EMPTY gives NULL; MULTI stays MULTI.
CREATE FUNCTION cartodb.CDB_TransformToWebmercator(g geometry) RETURNS geometry
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    clipped geometry;
BEGIN
    IF ST_SRID(g) = 3857 THEN
        RETURN g;
    END IF;
    IF ST_IsEmpty(g) THEN
        RETURN NULL;
    END IF;
    IF ST_SRID(g) = 0 THEN
        g := ST_SetSRID(g, 4326);
    ELSIF ST_SRID(g) <> 4326 THEN
        g := ST_Transform(g, 4326);
    END IF;
    -- The common case: already inside the band (a bounding-box test).
    IF g @ 'SRID=4326;POLYGON((-180 -89,-180 89,180 89,180 -89,-180 -89))'::geometry THEN
        RETURN ST_Transform(g, 3857);
    END IF;
    clipped := ST_Intersection(ST_MakeValid(g), ST_MakeEnvelope(-180, -89, 180, 89, 4326));
    IF ST_Dimension(g) >= 0 THEN
        -- Keep only parts of the input's dimension (an intersection may add lower ones).
        clipped := ST_CollectionExtract(clipped, ST_Dimension(g) + 1);
    END IF;
    IF clipped IS NULL OR ST_IsEmpty(clipped) THEN
        RETURN NULL;
    END IF;
    IF GeometryType(g) LIKE 'MULTI%' THEN
        clipped := ST_Multi(clipped);
    END IF;
    RETURN ST_Transform(clipped, 3857);
END
$$;

-- Row trigger of cartodbfied tables: the web mercator copy follows `the_geom`. Kept lean as it
-- runs for every row of every load: NULL and points inside the band (the common case: the_geom
-- is always SRID 4326) take a bounding-box test and one ST_Transform; the rest the full function.
CREATE FUNCTION cartodb._CDB_UpdateTheGeomWebmercator() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.the_geom IS NULL THEN
        NEW.the_geom_webmercator := NULL;
    ELSIF ST_SRID(NEW.the_geom) = 4326 THEN
        IF NEW.the_geom @ 'SRID=4326;POLYGON((-180 -89,-180 89,180 89,180 -89,-180 -89))'::geometry
        THEN
            NEW.the_geom_webmercator := ST_Transform(NEW.the_geom, 3857);
        ELSE
            NEW.the_geom_webmercator := cartodb.CDB_TransformToWebmercator(NEW.the_geom);
        END IF;
    ELSE
        NEW.the_geom_webmercator := cartodb.CDB_TransformToWebmercator(NEW.the_geom);
    END IF;
    RETURN NEW;
END
$$;

-- Statement trigger: no writes while the user's schema is over quota. Checked once per
-- statement (one COPY = one check), never per row, and before the statement: a check after it
-- would undo a statement that crosses the quota, but the space it took (index pages above
-- all) would stay counted, leaving the user over quota with nothing stored. copyfrom checks
-- the upload's size against the remaining quota before it starts.
CREATE FUNCTION cartodb._CDB_CheckQuota() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    quota int8 := cartodb._CDB_UserQuotaInBytes();
    used int8;
BEGIN
    IF quota > 0 THEN
        used := cartodb.CDB_UserDataSize(TG_TABLE_SCHEMA);
        IF used > quota THEN
            RAISE EXCEPTION 'Quota exceeded by %KB', ceil((used - quota) / 1024.0)::int8;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Statement trigger: records when the table last changed.
CREATE FUNCTION cartodb._CDB_TrackUpdates() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO cartodb.CDB_TableMetadata AS m (tabname, updated_at) VALUES (TG_RELID, now())
    ON CONFLICT (tabname) DO UPDATE SET updated_at = excluded.updated_at
    WHERE m.updated_at IS DISTINCT FROM excluded.updated_at;
    RETURN NULL;
END
$$;

-- Statement trigger: after rows arrived with their own cartodb_id (e.g. `COPY t FROM STDIN` of
-- a whole table), the sequence moves past them so later inserts do not collide. One primary-key
-- lookup per statement. It runs as the writer (no privileged code touches user tables): a key
-- that may insert but not read the table or set its sequence just skips it.
CREATE FUNCTION cartodb._CDB_SyncCartodbIdSequence() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    seq text := pg_get_serial_sequence(TG_RELID::regclass::text, 'cartodb_id');
    top int8;
BEGIN
    IF seq IS NOT NULL THEN
        BEGIN
            EXECUTE format('SELECT max(cartodb_id) FROM %s', TG_RELID::regclass) INTO top;
            IF top IS NOT NULL THEN
                EXECUTE format('SELECT setval(%L, $1) FROM %s WHERE last_value < $1 OR NOT is_called',
                               seq, seq::regclass)
                USING top;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;
        END;
    END IF;
    RETURN NULL;
END
$$;

-- Forgets tables that no longer exist (their oids could be reused).
CREATE FUNCTION cartodb._CDB_TableMetadataPurge() RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM cartodb.CDB_TableMetadata m
    WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = m.tabname::oid)
$$;

-- Marks a table as changed now (CARTO's name).
CREATE FUNCTION cartodb.CDB_TableMetadataTouch(tablename regclass) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tablename),
                       'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table %', tablename;
    END IF;
    INSERT INTO cartodb.CDB_TableMetadata AS m (tabname, updated_at) VALUES (tablename, now())
    ON CONFLICT (tabname) DO UPDATE SET updated_at = excluded.updated_at;
END
$$;

-- `base` if no column of `rel` has that name, else `base_0`, `base_1`...
CREATE FUNCTION cartodb._CDB_FreeColumnName(rel regclass, base text) RETURNS text
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    candidate text := base;
    i int := 0;
BEGIN
    WHILE EXISTS (SELECT 1 FROM pg_attribute
                  WHERE attrelid = rel AND attname = candidate AND NOT attisdropped) LOOP
        candidate := base || '_' || i;
        i := i + 1;
    END LOOP;
    RETURN candidate;
END
$$;

-- `base` if no relation of schema `nsp` has that name, else `base1`, `base2`...
CREATE FUNCTION cartodb._CDB_FreeRelationName(nsp oid, base text) RETURNS text
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    candidate text := left(base, 63);
    i int := 0;
BEGIN
    WHILE EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = nsp AND relname = candidate) LOOP
        i := i + 1;
        candidate := left(base, 63 - length(i::text)) || i;
    END LOOP;
    RETURN candidate;
END
$$;

-- The column `name` of `rel`: type name, typmod SRID (geometry only), NOT NULL, default.
CREATE FUNCTION cartodb._CDB_Column(rel regclass, name text,
    OUT typname name, OUT srid int, OUT notnull bool, OUT has_default bool)
    LANGUAGE sql STABLE AS $$
    SELECT t.typname,
           CASE WHEN t.typname = 'geometry' THEN postgis_typmod_srid(a.atttypmod) END,
           a.attnotnull, a.atthasdef
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = rel AND a.attname = name AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- Makes `reloid` a CARTO table in schema `destschema` (spec §10): `cartodb_id` (integer primary
-- key fed by a sequence), `the_geom` (geometry, 4326) and `the_geom_webmercator` (geometry,
-- 3857) kept in sync, GiST indexes, update tracking and a quota check. Idempotent.
CREATE FUNCTION cartodb.CDB_CartodbfyTable(destschema text, reloid regclass) RETURNS regclass
    LANGUAGE plpgsql AS $$
DECLARE
    nsp oid;
    tname name;
    qtable text;
    id_col record;
    geom record;
    merc record;
    id_ok bool := false;
    id_reuse bool := false;
    geom_expr text;
    geom_type text := 'geometry(Geometry,4326)';
    src_geom text;
    rewrite bool;
    seq text;
    tmp text;
    cols text;
    owner_role name;
    c record;
    ok bool;
BEGIN
    SELECT oid INTO nsp FROM pg_namespace WHERE nspname = destschema;
    IF nsp IS NULL THEN
        RAISE EXCEPTION 'Invalid schema name "%"', destschema;
    END IF;
    IF (SELECT relnamespace FROM pg_class WHERE oid = reloid) <> nsp THEN
        EXECUTE format('ALTER TABLE %s SET SCHEMA %I', reloid, destschema);
    END IF;
    SELECT relname, pg_get_userbyid(relowner) INTO tname, owner_role
    FROM pg_class WHERE oid = reloid;
    qtable := format('%I.%I', destschema, tname);

    -- Our triggers go first: they are recreated at the end, and would fire during the work.
    FOR c IN
        SELECT tgname FROM pg_trigger
        WHERE tgrelid = reloid
          AND tgname IN ('track_updates', 'update_the_geom_webmercator_trigger', 'test_quota',
                         'test_quota_per_row', 'sync_cartodb_id_seq')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', c.tgname, qtable);
    END LOOP;

    -- 1. The key. Keep an integer cartodb_id without NULLs or duplicates; move any other
    --    cartodb_id aside; else adopt a one-column integer primary key.
    SELECT * INTO id_col FROM cartodb._CDB_Column(reloid, 'cartodb_id');
    IF id_col.typname IS NULL THEN
        SELECT a.attname INTO tmp
        FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = reloid AND i.indisprimary AND i.indnatts = 1
          AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype);
        IF tmp IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO cartodb_id', qtable, tmp);
            SELECT * INTO id_col FROM cartodb._CDB_Column(reloid, 'cartodb_id');
        END IF;
    END IF;
    IF id_col.typname IN ('int2', 'int4', 'int8') THEN
        -- NOT NULL and a unique index say it without reading the table (the common case of
        -- a second call on a big table); else count.
        ok := id_col.notnull AND EXISTS (
            SELECT 1 FROM pg_index i
            WHERE i.indrelid = reloid AND i.indisunique AND i.indnatts = 1
              AND i.indpred IS NULL
              AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                 WHERE attrelid = reloid AND attname = 'cartodb_id'));
        IF NOT ok THEN
            EXECUTE format('SELECT count(*) = count(DISTINCT cartodb_id) FROM %s', qtable)
            INTO ok;
        END IF;
        IF ok THEN
            id_reuse := true;
            -- Perfect already: NOT NULL, a default, and the primary key.
            id_ok := id_col.notnull AND id_col.has_default AND EXISTS (
                SELECT 1 FROM pg_index i
                WHERE i.indrelid = reloid AND i.indisprimary AND i.indnatts = 1
                  AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                     WHERE attrelid = reloid AND attname = 'cartodb_id'));
        END IF;
    END IF;
    IF id_col.typname IS NOT NULL AND NOT id_reuse THEN
        EXECUTE format('ALTER TABLE %s RENAME COLUMN cartodb_id TO %I', qtable,
                       cartodb._CDB_FreeColumnName(reloid, 'cartodb_id'));
    END IF;

    -- 2. The geometry.
    SELECT * INTO geom FROM cartodb._CDB_Column(reloid, 'the_geom');
    SELECT * INTO merc FROM cartodb._CDB_Column(reloid, 'the_geom_webmercator');
    IF geom.typname = 'geometry' AND geom.srid = 4326 THEN
        geom_expr := 'the_geom';
        SELECT format_type(atttypid, atttypmod) INTO geom_type
        FROM pg_attribute WHERE attrelid = reloid AND attname = 'the_geom';
    ELSIF geom.typname IN ('geometry', 'geography') THEN
        src_geom := 'the_geom::geometry';
    ELSIF geom.typname IN ('text', 'varchar', 'bpchar') THEN
        BEGIN
            EXECUTE format('SELECT count(the_geom::geometry) FROM %s', qtable);
            src_geom := 'the_geom::geometry';
        EXCEPTION WHEN OTHERS THEN
            -- Not geometry text: keep the text under another name.
            EXECUTE format('ALTER TABLE %s RENAME COLUMN the_geom TO %I', qtable,
                           cartodb._CDB_FreeColumnName(reloid, 'the_geom_str'));
            geom.typname := NULL;
        END;
    ELSIF geom.typname IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s RENAME COLUMN the_geom TO %I', qtable,
                       cartodb._CDB_FreeColumnName(reloid, 'the_geom_orig'));
        geom.typname := NULL;
    END IF;
    IF geom_expr IS NULL AND src_geom IS NULL THEN
        -- No usable the_geom: the first other geometry column. One in 4326 is renamed,
        -- others are kept and the_geom is computed from them.
        SELECT a.attname, postgis_typmod_srid(a.atttypmod) AS srid,
               format_type(a.atttypid, a.atttypmod) AS type_text
        INTO c
        FROM pg_attribute a
        WHERE a.attrelid = reloid AND a.attnum > 0 AND NOT a.attisdropped
          AND a.atttypid = 'geometry'::regtype
          AND a.attname NOT IN ('the_geom', 'the_geom_webmercator')
        ORDER BY a.attnum LIMIT 1;
        IF c.attname IS NOT NULL AND c.srid = 4326 THEN
            EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO the_geom', qtable, c.attname);
            geom_expr := 'the_geom';
            geom_type := c.type_text;
        ELSIF c.attname IS NOT NULL THEN
            src_geom := quote_ident(c.attname);
        END IF;
    END IF;
    IF src_geom IS NOT NULL THEN
        -- Undeclared SRIDs are taken as 4326.
        geom_expr := format(
            'CASE WHEN ST_SRID(%1$s) = 0 THEN ST_SetSRID(%1$s, 4326) '
            'ELSE ST_Transform(%1$s, 4326) END', src_geom);
    END IF;

    rewrite := NOT id_ok OR geom_expr IS DISTINCT FROM 'the_geom'
        OR merc.typname IS DISTINCT FROM 'geometry' OR merc.srid IS DISTINCT FROM 3857;

    -- 3. Rewrite in one pass when anything is missing: the CARTO columns first, then the others
    --    in their order; defaults and NOT NULL of the others are kept.
    IF rewrite THEN
        seq := cartodb._CDB_FreeRelationName(nsp, tname || '_cartodb_id_seq');
        EXECUTE format('CREATE SEQUENCE %I.%I', destschema, seq);
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
        FROM pg_attribute
        WHERE attrelid = reloid AND attnum > 0 AND NOT attisdropped
          AND attname NOT IN ('cartodb_id', 'the_geom', 'the_geom_webmercator');
        tmp := cartodb._CDB_FreeRelationName(nsp, '_cdb_new_' || tname);
        EXECUTE format(
            'CREATE TABLE %I.%I AS SELECT %s AS cartodb_id, '
            '__cdb_g::%s AS the_geom, '
            -- __cdb_g is SRID 4326 (or NULL): the trigger's fast path, inline.
            'CASE WHEN __cdb_g @ %L::geometry THEN ST_Transform(__cdb_g, 3857) '
            'ELSE cartodb.CDB_TransformToWebmercator(__cdb_g) END::geometry(Geometry,3857) '
            'AS the_geom_webmercator%s '
            'FROM (SELECT %s, %s AS __cdb_g%s FROM %s OFFSET 0) AS __cdb_src',
            destschema, tmp,
            CASE WHEN id_reuse THEN 'cartodb_id' ELSE format('nextval(%L)::int8',
                 quote_ident(destschema) || '.' || quote_ident(seq)) END,
            geom_type,
            'SRID=4326;POLYGON((-180 -89,-180 89,180 89,180 -89,-180 -89))',
            coalesce(', ' || cols, ''),
            CASE WHEN id_reuse THEN 'cartodb_id' ELSE '1' END,
            coalesce(geom_expr, 'NULL::geometry'),
            coalesce(', ' || cols, ''),
            qtable);
        -- Run by someone else (an operator), the table stays its owner's.
        IF owner_role <> current_user THEN
            EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', destschema, tmp, owner_role);
            EXECUTE format('ALTER SEQUENCE %I.%I OWNER TO %I', destschema, seq, owner_role);
        END IF;
        -- Defaults and NOT NULL of the other columns; sequences of serial columns follow.
        FOR c IN
            SELECT a.attname, a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS def
            FROM pg_attribute a LEFT JOIN pg_attrdef d
                 ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE a.attrelid = reloid AND a.attnum > 0 AND NOT a.attisdropped
              AND a.attname NOT IN ('cartodb_id', 'the_geom', 'the_geom_webmercator')
              AND (a.attnotnull OR d.adbin IS NOT NULL)
        LOOP
            IF c.def IS NOT NULL THEN
                EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I SET DEFAULT %s',
                               destschema, tmp, c.attname, c.def);
            END IF;
            IF c.attnotnull THEN
                EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I SET NOT NULL',
                               destschema, tmp, c.attname);
            END IF;
        END LOOP;
        FOR c IN
            SELECT s.oid::regclass AS seq, a.attname
            FROM pg_depend d
            JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
            JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
            WHERE d.refobjid = reloid AND d.deptype = 'a'
              AND a.attname NOT IN ('cartodb_id', 'the_geom', 'the_geom_webmercator')
        LOOP
            EXECUTE format('ALTER SEQUENCE %s OWNED BY %I.%I.%I',
                           c.seq, destschema, tmp, c.attname);
        END LOOP;
        -- Who could read or write the table still can.
        FOR c IN
            SELECT a.privilege_type, a.grantee
            FROM pg_class t, aclexplode(t.relacl) a
            WHERE t.oid = reloid AND a.grantee <> t.relowner
        LOOP
            EXECUTE format('GRANT %s ON %I.%I TO %s', c.privilege_type, destschema, tmp,
                           CASE WHEN c.grantee = 0 THEN 'PUBLIC'
                                ELSE quote_ident(c.grantee::regrole::text) END);
        END LOOP;
        EXECUTE format('DROP TABLE %s', qtable);
        EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', destschema, tmp, tname);
        reloid := qtable::regclass;
        IF seq <> tname || '_cartodb_id_seq'
           AND to_regclass(format('%I.%I', destschema, tname || '_cartodb_id_seq')) IS NULL
           AND length(tname || '_cartodb_id_seq') <= 63 THEN
            EXECUTE format('ALTER SEQUENCE %I.%I RENAME TO %I', destschema, seq,
                           tname || '_cartodb_id_seq');
            seq := tname || '_cartodb_id_seq';
        END IF;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN cartodb_id SET NOT NULL, '
                       'ALTER COLUMN cartodb_id SET DEFAULT nextval(%L::regclass)',
                       qtable, format('%I.%I', destschema, seq));
        EXECUTE format('ALTER SEQUENCE %I.%I OWNED BY %s.cartodb_id',
                       destschema, seq, qtable);
        EXECUTE format('SELECT setval(%L::regclass, coalesce(max(cartodb_id), 0) + 1, false) '
                       'FROM %s', format('%I.%I', destschema, seq), qtable);
    END IF;

    -- 4. Indexes: the primary key on cartodb_id (replacing any other), GiST on both geometries.
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i
        WHERE i.indrelid = reloid AND i.indisprimary AND i.indnatts = 1
          AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                             WHERE attrelid = reloid AND attname = 'cartodb_id'))
    THEN
        FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = reloid AND contype = 'p' LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', qtable, c.conname);
        END LOOP;
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY (cartodb_id)', qtable,
                       cartodb._CDB_FreeRelationName(nsp, tname || '_pkey'));
    END IF;
    FOR c IN SELECT unnest(ARRAY['the_geom', 'the_geom_webmercator']) AS col LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_index i
            JOIN pg_class ic ON ic.oid = i.indexrelid
            JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'gist'
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = reloid AND i.indnatts = 1 AND a.attname = c.col)
        THEN
            EXECUTE format('CREATE INDEX %I ON %s USING gist (%I)',
                           cartodb._CDB_FreeRelationName(nsp, tname || '_' || c.col || '_idx'),
                           qtable, c.col);
        END IF;
    END LOOP;

    -- 5. Triggers: lean ones (see docs/cartodb.md).
    EXECUTE format('CREATE TRIGGER update_the_geom_webmercator_trigger '
                   'BEFORE INSERT OR UPDATE OF the_geom ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION cartodb._CDB_UpdateTheGeomWebmercator()', qtable);
    EXECUTE format('CREATE TRIGGER test_quota BEFORE INSERT OR UPDATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION cartodb._CDB_CheckQuota()', qtable);
    EXECUTE format('CREATE TRIGGER sync_cartodb_id_seq AFTER INSERT ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION cartodb._CDB_SyncCartodbIdSequence()',
                   qtable);
    EXECUTE format('CREATE TRIGGER track_updates '
                   'AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION cartodb._CDB_TrackUpdates()', qtable);

    PERFORM cartodb._CDB_TableMetadataPurge();
    PERFORM cartodb.CDB_TableMetadataTouch(reloid);
    RETURN reloid;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Bulk loads into an empty cartodbfied table (what /sql/copyfrom does for one; see
-- docs/cartodb.md). Row by row, a COPY into a CARTO table spends most of its time descending
-- the two GiST indexes and running the web-mercator trigger (docs/bench/tuning.md). Into an
-- empty table the server instead stages the rows in a temporary twin of the table (same column
-- types, defaults and checks, so a bad row fails there and names its line), inserts them in one
-- statement with the web-mercator column computed set-based, and builds the GiST indexes after
-- the insert, by sorting. Same rows, ids, web-mercator values, indexes and statement triggers.
-- ---------------------------------------------------------------------------------------------

-- What the row trigger `_CDB_UpdateTheGeomWebmercator` stores for `g`, as one expression (SQL,
-- so it is inlined into the statement that uses it).
CREATE FUNCTION cartodb._CDB_WebmercatorOf(g geometry) RETURNS geometry
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN g IS NULL THEN NULL
        WHEN ST_SRID(g) = 4326
             AND g @ 'SRID=4326;POLYGON((-180 -89,-180 89,180 89,180 -89,-180 -89))'::geometry
        THEN ST_Transform(g, 3857)
        ELSE cartodb.CDB_TransformToWebmercator(g)
    END
$$;

-- Starts a bulk load into `target`, inside the caller's transaction: when `target` is an empty
-- cartodbfied table the caller owns, whose only row trigger is ours (enabled), with no rules,
-- row security, identity or generated columns, creates its staging table (a temporary table of
-- the same name, so COPY's errors read as they would, dropped at commit) and returns its
-- qualified name. Otherwise NULL: the caller runs its COPY as it is.
CREATE FUNCTION cartodb._CDB_BulkLoadStage(target regclass) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    staging text;
    empty bool;
BEGIN
    IF target IS NULL
       OR NOT EXISTS (
           SELECT 1 FROM pg_class c
           WHERE c.oid = target AND c.relkind = 'r' AND c.relpersistence = 'p'
             AND NOT c.relrowsecurity AND NOT c.relhasrules
             AND pg_has_role(c.relowner, 'MEMBER'))
       OR NOT EXISTS (
           SELECT 1 FROM pg_trigger
           WHERE tgrelid = target AND tgname = 'update_the_geom_webmercator_trigger'
             AND tgfoid = 'cartodb._CDB_UpdateTheGeomWebmercator'::regproc AND tgenabled = 'O')
       -- Another row trigger could change a row before ours, or see it without its value.
       OR EXISTS (
           SELECT 1 FROM pg_trigger
           WHERE tgrelid = target AND NOT tgisinternal AND tgtype & 1 = 1
             AND tgname <> 'update_the_geom_webmercator_trigger')
       OR EXISTS (
           SELECT 1 FROM pg_attribute
           WHERE attrelid = target AND attnum > 0 AND NOT attisdropped
             AND (attidentity <> '' OR attgenerated <> ''))
       OR (SELECT count(*) FROM pg_attribute
           WHERE attrelid = target AND NOT attisdropped AND atttypid = 'geometry'::regtype
             AND attname IN ('the_geom', 'the_geom_webmercator')) <> 2
    THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %s)', target) INTO empty;
    staging := format('pg_temp.%I', (SELECT relname FROM pg_class WHERE oid = target));
    IF NOT empty OR to_regclass(staging) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TEMP TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS) '
                   'ON COMMIT DROP', staging, target);
    RETURN staging;
END
$$;

-- Ends a bulk load begun by `_CDB_BulkLoadStage`: the staged rows go into `target` in one
-- INSERT, in the order they came; returns how many. While `target` is still empty (checked
-- under an exclusive lock, waited for 3 s at most, held to commit) its
-- plain GiST indexes are dropped and built again after the insert, and the web-mercator
-- trigger's work is done by the INSERT itself; otherwise (rows arrived meanwhile, someone is
-- reading the table) the staged rows are inserted with everything in place.
CREATE FUNCTION cartodb._CDB_BulkLoadFinish(target regclass, staging regclass) RETURNS int8
    LANGUAGE plpgsql AS $$
DECLARE
    qtarget text;
    cols text;
    empty bool;
    rebuilt text[];
    c record;
    inserted int8;
    waited text;
BEGIN
    SELECT format('%I.%I', n.nspname, r.relname) INTO qtarget
    FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace WHERE r.oid = target;
    -- Waiting a little only: long enough for autovacuum, which gives way to a waiting lock
    -- after deadlock_timeout, but a reader in a long transaction (a map, or another load of
    -- the table, which holds a share lock from its own staging) must neither hold this load
    -- up nor deadlock with it. Either way the rows still go in, the slow way.
    waited := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', '3s', true);
    BEGIN
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', qtarget);
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %s)', qtarget) INTO empty;
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        empty := false;
    END;
    PERFORM set_config('lock_timeout', waited, true);
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
    FROM pg_attribute
    WHERE attrelid = target AND attnum > 0 AND NOT attisdropped
      AND attname <> 'the_geom_webmercator';
    IF NOT empty THEN
        EXECUTE format('INSERT INTO %s (%s, the_geom_webmercator) '
                       'SELECT %2$s, the_geom_webmercator FROM %s', qtarget, cols, staging);
        GET DIAGNOSTICS inserted = ROW_COUNT;
        RETURN inserted;
    END IF;
    -- Only indexes a DROP and the same CREATE give back whole: no constraint, comment,
    -- tablespace, clustering or statistics target of their own, nothing depending on them.
    FOR c IN
        SELECT format('%I.%I', n.nspname, ic.relname) AS name,
               pg_get_indexdef(i.indexrelid) AS def
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        JOIN pg_am am ON am.oid = ic.relam
        WHERE i.indrelid = target AND am.amname = 'gist' AND i.indisvalid
          AND NOT i.indisclustered AND ic.reltablespace = 0
          AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid)
          AND NOT EXISTS (SELECT 1 FROM pg_description WHERE objoid = i.indexrelid)
          AND NOT EXISTS (SELECT 1 FROM pg_depend
                          WHERE refclassid = 'pg_class'::regclass
                            AND refobjid = i.indexrelid)
          AND NOT EXISTS (SELECT 1 FROM pg_attribute
                          WHERE attrelid = i.indexrelid AND attstattarget >= 0)
        ORDER BY ic.relname
    LOOP
        EXECUTE format('DROP INDEX %s', c.name);
        rebuilt := rebuilt || c.def;
    END LOOP;
    EXECUTE format('ALTER TABLE %s DISABLE TRIGGER update_the_geom_webmercator_trigger',
                   qtarget);
    EXECUTE format('INSERT INTO %s (%s, the_geom_webmercator) '
                   'SELECT %2$s, cartodb._CDB_WebmercatorOf(the_geom) FROM %s',
                   qtarget, cols, staging);
    GET DIAGNOSTICS inserted = ROW_COUNT;
    EXECUTE format('ALTER TABLE %s ENABLE TRIGGER update_the_geom_webmercator_trigger',
                   qtarget);
    FOR c IN SELECT unnest(rebuilt) AS def LOOP
        EXECUTE c.def;
    END LOOP;
    RETURN inserted;
END
$$;

-- The one-argument form, as CARTO: the table goes to schema public.
CREATE FUNCTION cartodb.CDB_CartodbfyTable(reloid regclass) RETURNS regclass
    LANGUAGE sql AS $$
    SELECT cartodb.CDB_CartodbfyTable('public', reloid)
$$;

-- The user's tables: all, or those the public role can read ('public'), or not ('private').
CREATE FUNCTION cartodb.CDB_UserTables(perm text DEFAULT 'all') RETURNS SETOF name
    LANGUAGE sql STABLE AS $$
    WITH public_role AS (
        SELECT to_regrole('carto_' || substring(current_database() FROM '^carto_user_(.*)$')
                          || '_public') AS oid
    )
    SELECT c.relname
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace, public_role p
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cartodb', 'topology')
      AND n.nspname NOT LIKE 'pg\_%'
      AND c.relname NOT IN ('spatial_ref_sys', 'cdb_tablemetadata')
      AND has_table_privilege(c.oid, 'SELECT')
      AND CASE lower(perm)
          WHEN 'public' THEN p.oid IS NOT NULL AND has_table_privilege(p.oid, c.oid, 'SELECT')
          WHEN 'private' THEN p.oid IS NULL OR NOT has_table_privilege(p.oid, c.oid, 'SELECT')
          ELSE true
      END
    ORDER BY c.relname
$$;
