//! `rananeeti-bench`: a real node over loopback, on SQLite and on PostgreSQL, against the same
//! insert done directly with sqlx and against one fsync per queued write; prints a markdown table.
//!
//! `machine` describes the host, `load` is the HTTP load generator, `baseline` the two baselines,
//! `node` runs and watches the node process, `scenario` is one store's run, `report` the output.

mod baseline;
mod load;
mod machine;
mod node;
mod report;
mod scenario;
mod tally;

use anyhow::Context;
use baseline::{FileLayout, StoreKind};
use clap::{Parser, ValueEnum};
use report::Report;
use scenario::{Plan, CONCURRENCIES};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "rananeeti-bench",
    about = "Benchmarks a rananeeti node against direct-insert and fsync-per-write baselines"
)]
struct Args {
    /// 1 s cells and a smaller outage, to check the benchmark runs.
    #[arg(long)]
    quick: bool,
    /// Which store the node runs on.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    store: StoreChoice,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `rananeeti` binary to run as the node; default: next to this executable.
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Directory for the temporary files; it must not be tmpfs, or fsync costs nothing.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreChoice {
    Sqlite,
    Postgres,
    Both,
}

impl StoreChoice {
    fn kinds(self) -> Vec<StoreKind> {
        match self {
            StoreChoice::Sqlite => vec![StoreKind::Sqlite],
            StoreChoice::Postgres => vec![StoreKind::Postgres],
            StoreChoice::Both => vec![StoreKind::Sqlite, StoreKind::Postgres],
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!("[bench] warning: this is a debug build; run with --release for numbers that mean something");
    }
    let node_binary = scenario::node_binary_path(args.node_bin.clone())?;
    let work_root = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work_dir = tempfile::Builder::new()
        .prefix("rananeeti-bench-")
        .tempdir_in(&work_root)
        .with_context(|| format!("creating a temporary directory in {}", work_root.display()))?;
    let plan = if args.quick {
        Plan { cell: Duration::from_secs(1), warmup: Duration::from_millis(250), drain_entries: 300 }
    } else {
        Plan { cell: Duration::from_secs(5), warmup: Duration::from_secs(1), drain_entries: 3000 }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run(&args, &plan, node_binary, work_dir.path().to_path_buf()))?;
    let markdown = report.to_markdown();
    print!("{markdown}");
    if let Some(out) = &args.out {
        std::fs::write(out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

async fn run(args: &Args, plan: &Plan, node_binary: PathBuf, work_dir: PathBuf) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_at = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| now.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let machine = machine::describe(&work_dir);
    eprintln!(
        "[bench] {} cores, {}, {}; files on {}",
        machine.cores, machine.cpu_model, machine.kernel, machine.filesystem
    );
    let mut notes = Vec::new();

    // The queue baseline does not depend on the store: measured once.
    let fsync_dir = work_dir.join("fsync-per-write");
    std::fs::create_dir_all(&fsync_dir)?;
    let (fsync_shared, fsync_per_worker) = {
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || measure_fsync_per_write(&fsync_dir, &plan)).await??
    };

    let mut stores = Vec::new();
    for kind in args.store.kinds() {
        let results = scenario::run(kind, plan, &node_binary, &work_dir.join(kind.name()), &mut notes)
            .await
            .with_context(|| format!("benchmarking the node on {}", kind.name()))?;
        stores.push(results);
    }

    let mode = if args.quick {
        format!("quick: {} ms per cell after a {} ms warm-up", plan.cell.as_millis(), plan.warmup.as_millis())
    } else {
        format!("full: {} s per cell after a {} s warm-up", plan.cell.as_secs(), plan.warmup.as_secs())
    };
    let mut command = String::from("cargo run --release -p rananeeti-bench --");
    if args.quick {
        command.push_str(" --quick");
    }
    command.push_str(&format!(" --store {}", format!("{:?}", args.store).to_lowercase()));
    Ok(Report {
        machine,
        command,
        mode: format!("{mode}, outage of {} reservations, node {}", plan.drain_entries, node_binary.display()),
        started_at,
        took_seconds: started.elapsed().as_secs_f64(),
        fsync_shared,
        fsync_per_worker,
        stores,
        notes,
    })
}

type Cells = Vec<(usize, tally::Summary)>;

/// FsyncPerWrite at each concurrency, with one shared file and with one file per worker (the
/// same thing at concurrency 1, so measured once there).
fn measure_fsync_per_write(dir: &std::path::Path, plan: &Plan) -> anyhow::Result<(Cells, Cells)> {
    let mut shared = Vec::new();
    let mut per_worker = Vec::new();
    for concurrency in CONCURRENCIES {
        for layout in [FileLayout::SharedFile, FileLayout::FilePerWorker] {
            if concurrency == 1 && layout == FileLayout::FilePerWorker {
                let (_, summary) = shared.last().cloned().expect("the shared-file cell ran first");
                per_worker.push((concurrency, summary));
                continue;
            }
            let cell_dir = dir.join(format!("{layout:?}-{concurrency}"));
            std::fs::create_dir_all(&cell_dir)?;
            baseline::run_fsync_per_write(&cell_dir, layout, concurrency, plan.warmup)?;
            let summary = baseline::run_fsync_per_write(&cell_dir, layout, concurrency, plan.cell)?.summary();
            eprintln!(
                "[bench] FsyncPerWrite {layout:?} c={concurrency}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
                summary.ok_per_second,
                summary.p50_ms.unwrap_or(0.0),
                summary.p99_ms.unwrap_or(0.0),
                summary.errors
            );
            match layout {
                FileLayout::SharedFile => shared.push((concurrency, summary)),
                FileLayout::FilePerWorker => per_worker.push((concurrency, summary)),
            }
        }
    }
    Ok((shared, per_worker))
}
