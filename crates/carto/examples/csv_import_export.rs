//! Imports a CSV file into a new table and exports it back.
//!
//! ```text
//! CARTO_API_URL=http://127.0.0.1:8080/user/alice/ CARTO_API_KEY=... \
//!     cargo run -p carto --example csv_import_export -- [input.csv] [output.csv]
//! ```
//!
//! Without arguments it writes a small sample CSV first. The table is `csv_example`.

use std::time::Instant;

use carto::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| "csv_example.csv".into());
    let output = args.next().unwrap_or_else(|| "csv_example.out.csv".into());
    if !std::path::Path::new(&input).exists() {
        let mut sample = String::from("id,name,lon,lat\n");
        for i in 0..10_000 {
            sample.push_str(&format!(
                "{i},\"city {i}, somewhere\",{},{}\n",
                -3.7 + f64::from(i) / 1e4,
                40.4
            ));
        }
        std::fs::write(&input, sample)?;
        println!("wrote a sample {input}");
    }

    let client = Client::from_env()?;
    client
        .sql()
        .send(
            "DROP TABLE IF EXISTS csv_example; \
             CREATE TABLE csv_example (id int, name text, lon float8, lat float8)",
        )
        .await?;

    let copy = client.copy();
    let started = Instant::now();
    let outcome = copy
        .copy_from_file(
            "COPY csv_example (id, name, lon, lat) FROM STDIN WITH (FORMAT csv, HEADER true)",
            &input,
        )
        .await?;
    println!(
        "imported {} rows in {:.2} s (server {:.2} s)",
        outcome.total_rows,
        started.elapsed().as_secs_f64(),
        outcome.time
    );

    let bytes = copy
        .copy_to_file(
            "COPY (SELECT id, name, lon, lat FROM csv_example ORDER BY id) \
             TO STDOUT WITH (FORMAT csv, HEADER true)",
            &output,
            false,
        )
        .await?;
    println!("exported {bytes} bytes to {output}");
    Ok(())
}
