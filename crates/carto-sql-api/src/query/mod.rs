//! The `/sql` endpoint: statement execution and output formats (spec §4).
//!
//! [`Options`] reads the request's parameters; [`answer`] plans the statements (paging and
//! GeoJSON wrappers, one transaction for several statements), runs them on a connection
//! authenticated as the caller's role and streams the document: rows are encoded and sent as
//! PostgreSQL produces them, never collected (see [`exec`]).

pub mod exec;
pub mod export;
pub mod format;
pub mod guard;
mod svg;
mod topojson;
pub mod values;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use chrono::Utc;

use crate::auth::Caller;
use crate::db::{quote_ident, Pools};
use crate::error::ApiError;
use crate::sql_text::{
    is_copy_from_stdin, is_plain_select, is_transaction_control, split_statements,
};

/// Output formats the server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"rows":[...],"time":..,"fields":{..},"total_rows":N}`.
    Json,
    /// A FeatureCollection from the `the_geom` column.
    GeoJson,
    /// CSV with a header row.
    Csv,
    /// A zipped shapefile set (`.shp`, `.shx`, `.dbf`, `.prj`), written by `ogr2ogr`.
    Shp,
    /// KML, written by `ogr2ogr`.
    Kml,
    /// A GeoPackage, written by `ogr2ogr`.
    Gpkg,
    /// A SpatiaLite database, written by `ogr2ogr`.
    Spatialite,
    /// An SVG document of the geometries (see [`svg`]).
    Svg,
    /// A TopoJSON Topology (see [`topojson`]).
    TopoJson,
}

/// Formats CARTO knows but this server does not write.
const UNSUPPORTED_FORMATS: [&str; 1] = ["arraybuffer"];

impl Format {
    /// Parses a `format` parameter (case-insensitive).
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let lower = text.to_lowercase();
        match lower.as_str() {
            "json" => Ok(Format::Json),
            "geojson" => Ok(Format::GeoJson),
            "csv" => Ok(Format::Csv),
            "shp" => Ok(Format::Shp),
            "kml" => Ok(Format::Kml),
            "gpkg" => Ok(Format::Gpkg),
            "spatialite" => Ok(Format::Spatialite),
            "svg" => Ok(Format::Svg),
            "topojson" => Ok(Format::TopoJson),
            known if UNSUPPORTED_FORMATS.contains(&known) => Err(ApiError::bad_request(format!(
                "Format {known} is not supported by this server: use json, geojson, csv, svg, topojson, shp, kml, gpkg or spatialite"
            ))),
            _ => Err(ApiError::bad_request(format!("Invalid format: {lower}"))),
        }
    }

    fn id(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::GeoJson => "geojson",
            Format::Csv => "csv",
            Format::Shp => "shp",
            Format::Kml => "kml",
            Format::Gpkg => "gpkg",
            Format::Spatialite => "spatialite",
            Format::Svg => "svg",
            Format::TopoJson => "topojson",
        }
    }

    /// The download's extension (spec §4.3).
    fn extension(self) -> &'static str {
        match self {
            Format::Shp => "zip",
            Format::Spatialite => "sqlite",
            other => other.id(),
        }
    }

    /// Whether `ogr2ogr` writes the format (see [`export`]).
    fn is_file(self) -> bool {
        matches!(
            self,
            Format::Shp | Format::Kml | Format::Gpkg | Format::Spatialite
        )
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json | Format::GeoJson | Format::TopoJson => "application/json; charset=utf-8",
            Format::Svg => "image/svg+xml; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Shp => "application/zip; charset=utf-8",
            Format::Kml => "application/kml; charset=utf-8",
            Format::Gpkg | Format::Spatialite => "application/x-sqlite3; charset=utf-8",
        }
    }
}

/// A `/sql` request's parameters, checked.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQL (`q`).
    pub q: String,
    /// Output format.
    pub format: Format,
    /// Whether `format` was sent (decides `inline` vs `attachment`).
    pub format_given: bool,
    /// `filename`, as sent.
    pub filename: Option<String>,
    /// Columns to leave out.
    pub skipfields: Vec<String>,
    /// Decimals of GeoJSON coordinates.
    pub dp: u32,
    /// `rows_per_page` and `page` (0-based), when both are integers.
    pub page: Option<(u64, u64)>,
    /// `order_by` column.
    pub order_by: Option<String>,
    /// `sort_order`: `ASC` or `DESC`.
    pub sort_order: Option<&'static str>,
    /// JSONP callback (query string only), already reduced to safe characters.
    pub callback: Option<String>,
    /// `cache_policy=persist`.
    pub persist: bool,
}

/// Server messages kept per request: a loop raising notices must not fill the server's memory.
const MAX_NOTICES: usize = 1000;

/// Largest `dp` accepted; PostGIS prints at most 15 significant decimals anyway.
const MAX_DP: u32 = 20;

impl Options {
    /// Reads the parameters `params` (query string then body, later ones winning).
    pub fn parse(params: &[(String, String)], callback: Option<String>) -> Result<Self, ApiError> {
        let last = |name: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let q = last("q")
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| ApiError::bad_request("You must indicate a sql query"))?
            .to_string();
        let format_given = last("format").is_some_and(|f| !f.is_empty());
        let format = match last("format").filter(|f| !f.is_empty()) {
            Some(f) => Format::parse(f)?,
            None => Format::Json,
        };
        let dp = match last("dp").filter(|d| !d.is_empty()) {
            None => 6,
            Some(d) => d
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|d| *d <= MAX_DP)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Invalid dp: {d} (an integer from 0 to {MAX_DP})"
                    ))
                })?,
        };
        let integer = |name: &str| last(name).and_then(|v| v.trim().parse::<u64>().ok());
        let page = match (integer("rows_per_page"), integer("page")) {
            (Some(rows), Some(page)) => Some((rows, page)),
            _ => None,
        };
        let sort_order = match last("sort_order").map(str::to_ascii_lowercase).as_deref() {
            Some("asc") => Some("ASC"),
            Some("desc") => Some("DESC"),
            _ => None,
        };
        Ok(Options {
            q,
            format,
            format_given,
            filename: last("filename")
                .filter(|f| !f.is_empty())
                .map(str::to_string),
            skipfields: params
                .iter()
                .filter(|(k, _)| k == "skipfields")
                .flat_map(|(_, v)| v.split(','))
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .collect(),
            dp,
            page,
            order_by: last("order_by")
                .filter(|o| !o.is_empty())
                .map(str::to_string),
            sort_order,
            callback,
            persist: last("cache_policy") == Some("persist"),
        })
    }

    /// The statements to run for `caller`.
    pub fn plan(
        &self,
        caller: &Caller,
        statement_timeout: Option<Duration>,
    ) -> Result<exec::Plan, ApiError> {
        let statements = split_statements(&self.q).map_err(ApiError::bad_request)?;
        let Some((last, earlier)) = statements.split_last() else {
            return Err(ApiError::bad_request("You must indicate a sql query"));
        };
        if statements.iter().any(|s| is_copy_from_stdin(s)) {
            return Err(ApiError::bad_request(
                "COPY from stdin failed: No source stream defined",
            ));
        }
        let mut last = last.to_string();
        if (self.page.is_some() || self.order_by.is_some()) && is_plain_select(&last) {
            // The newline ends a trailing `-- comment` before the wrapper's own text.
            let mut wrapped = format!("SELECT * FROM ({last}\n) AS cdbq_1");
            if let Some(column) = &self.order_by {
                wrapped.push_str(&format!(" ORDER BY {}", quote_ident(column)));
                if let Some(order) = self.sort_order {
                    wrapped.push(' ');
                    wrapped.push_str(order);
                }
            }
            if let Some((rows, page)) = self.page {
                let offset = rows.saturating_mul(page);
                wrapped.push_str(&format!(" LIMIT {rows} OFFSET {offset}"));
            }
            last = wrapped;
        }
        match self.format {
            Format::GeoJson | Format::TopoJson => {
                // The geometry comes last, so the encoder finds it whatever the other columns are.
                last = format!(
                    "SELECT *, ST_AsGeoJSON(the_geom, {}) AS the_geom_geojson FROM ({last}\n) AS cdbq_geojson",
                    self.dp
                );
            }
            Format::Svg => {
                last = format!(
                    "SELECT ST_AsSVG(the_geom, 0, {}), ST_XMin(the_geom), ST_YMin(the_geom), \
                     ST_XMax(the_geom), ST_YMax(the_geom) FROM ({last}\n) AS cdbq_svg",
                    self.dp
                );
            }
            _ => {}
        }
        let every_result_set = self.format == Format::Json;
        let mut planned: Vec<exec::Statement> = earlier
            .iter()
            .map(|s| exec::Statement {
                sql: s.to_string(),
                emit: every_result_set,
            })
            .collect();
        planned.push(exec::Statement {
            sql: last,
            emit: true,
        });
        let controls_transactions = statements.iter().any(|s| is_transaction_control(s));
        Ok(exec::Plan {
            wrap_in_transaction: planned.len() > 1 && !controls_transactions,
            controls_transactions,
            statements: planned,
            guard: !caller.is_master(),
            skipfields: self.skipfields.clone(),
            statement_timeout,
        })
    }

    /// The download's name without extension (spec §4.3).
    fn download_name(&self) -> String {
        self.filename
            .as_deref()
            .map(download_name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "cartodb-query".into())
    }

    /// `Content-Disposition` (spec §4.3).
    fn content_disposition(&self) -> String {
        let kind = if self.format_given || self.filename.is_some() {
            "attachment"
        } else {
            "inline"
        };
        let name = self.download_name();
        let now = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
        format!(
            "{kind}; filename={name}.{}; modification-date=\"{now}\";",
            self.format.extension()
        )
    }

    /// `Cache-Control` (spec §4.4, reduced): `persist` caches for a year; a query that may
    /// write must be revalidated at once; a read may be cached until the next 5-minute
    /// boundary, since this server does not track when tables change.
    fn cache_control(&self) -> String {
        if self.persist {
            return "public,max-age=31536000".into();
        }
        let max_age = if may_write(&self.q) {
            0
        } else {
            300 - Utc::now().timestamp().rem_euclid(300)
        };
        format!("no-cache,max-age={max_age},must-revalidate,public")
    }
}

/// Runs the request for `caller`: the streaming response, or the error that came before any row.
pub async fn answer(
    pools: &Pools,
    caller: &Caller,
    options: &Options,
    config: &crate::Config,
) -> Result<Response, ApiError> {
    let plan = options.plan(caller, config.query_timeout)?;
    // The layer name reaches ogr2ogr (as the value of -nln, so a leading `-` is no option),
    // so it keeps only characters no driver treats specially.
    let layer = || -> String {
        options
            .download_name()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut response = if options.format.is_file() {
        let client = pools.get(&caller.key).await?;
        export::answer(client, plan, options.format, &layer(), &config.exports).await?
    } else if options.format == Format::Svg {
        let client = pools.get(&caller.key).await?;
        svg::answer(client, plan, &config.exports).await?
    } else if options.format == Format::TopoJson {
        let client = pools.get(&caller.key).await?;
        topojson::answer(client, plan, &layer(), &config.exports).await?
    } else {
        let encoder: Box<dyn format::Encoder> = match options.format {
            Format::Json => Box::new(format::Json::new(options.callback.clone())),
            Format::GeoJson => Box::new(format::GeoJson::new(options.callback.clone())),
            _ => Box::new(format::Csv::new()),
        };
        let client = pools.get(&caller.key).await?;
        // Only the JSON document reports server messages.
        let notices = match options.format {
            Format::Json => Some(pools.notices(&client, MAX_NOTICES).await?),
            _ => None,
        };
        let stream = exec::start(client, plan, encoder, notices).await?;
        Response::new(Body::from_stream(stream))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(options.format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_bytes(options.content_disposition().as_bytes()) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&options.cache_control()) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    if let Ok(value) = HeaderValue::from_str(&pools.host_label(&caller.key.login).await) {
        headers.insert("x-served-by-db-host", value);
    }
    if let Ok(value) =
        HeaderValue::from_str(&Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string())
    {
        headers.insert(header::LAST_MODIFIED, value);
    }
    Ok(response)
}

/// A JSONP callback name reduced to the characters a function reference needs, so that it
/// cannot inject script; `None` if nothing is left.
pub fn jsonp_callback(raw: &str) -> Option<String> {
    let name: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '[' | ']'))
        .collect();
    (!name.is_empty()).then_some(name)
}

/// A download name: the base name without extension, with `; ( ) [ ] < > ' "`, white space and
/// control characters replaced by `_` (spec §4.3).
fn download_name(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let stem = match base.rfind('.') {
        Some(dot) if dot > 0 => base.get(..dot).unwrap_or(base),
        _ => base,
    };
    stem.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() || ";()[]<>'\"".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Upstream's `\b(alter|insert|update|delete|create|drop|reindex|truncate|refresh)\b`,
/// case-insensitive, on the whole text.
fn may_write(q: &str) -> bool {
    q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|word| {
            [
                "alter", "insert", "update", "delete", "create", "drop", "reindex", "truncate",
                "refresh",
            ]
            .iter()
            .any(|w| word.eq_ignore_ascii_case(w))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(Format::parse("GeoJSON").ok(), Some(Format::GeoJson));
        assert_eq!(
            Format::parse("Unknown").err().map(|e| e.message()),
            Some("Invalid format: unknown".to_string())
        );
        assert_eq!(Format::parse("SHP").ok(), Some(Format::Shp));
        assert_eq!(Format::Spatialite.extension(), "sqlite");
        assert_eq!(Format::Shp.extension(), "zip");
        assert_eq!(Format::parse("SVG").ok(), Some(Format::Svg));
        assert_eq!(Format::parse("topojson").ok(), Some(Format::TopoJson));
        assert!(Format::parse("arraybuffer")
            .err()
            .is_some_and(|e| e.message().contains("not supported")));
    }

    #[test]
    fn names_and_writes() {
        assert_eq!(download_name("/tmp/my file(1).csv"), "my_file_1_");
        assert_eq!(download_name(".hidden"), ".hidden");
        assert_eq!(download_name("a;b'c\"d"), "a_b_c_d");
        assert!(may_write("INSERT INTO t VALUES (1)"));
        assert!(may_write("select 1; DROP table x"));
        assert!(!may_write("select created_at from updates"));
        assert_eq!(jsonp_callback("cb"), Some("cb".into()));
        assert_eq!(
            jsonp_callback("a.b[0]</script>"),
            Some("a.b[0]script".into())
        );
        assert_eq!(jsonp_callback("();"), None);
    }
}
