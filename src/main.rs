//! The `retrace` command: train, sample, inspect and benchmark diffusion models; with no
//! subcommand, the desktop viewer on the bundled default.

use anyhow::Result;
use clap::{Parser, Subcommand};

use retrace::device::DeviceRequest;

mod cli;

#[derive(Parser)]
#[command(
    name = "retrace",
    version,
    about = "Which training images made a diffusion model generate this?"
)]
struct Cli {
    /// Compute device: auto (CUDA, else a GPU through wgpu, else the CPU), cpu (flex), wgpu,
    /// vulkan (wgpu pinned to Vulkan: SPIR-V kernels) or cuda (builds with the `cuda` feature).
    /// Overrides RETRACE_DEVICE.
    #[arg(long, global = true)]
    device: Option<DeviceRequest>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a DDPM on a dataset, saving checkpoints (Ctrl-C saves one and stops).
    Train(cli::train::TrainArgs),
    /// Generate images from a trained model (one PNG, a grid when several seeds are given).
    Sample(cli::sample::SampleArgs),
    /// Build (or finish) the index of projected training-gradient features.
    Index(cli::index::IndexArgs),
    /// Rank the training images by their influence on a query image or a generated sample.
    Attribute(cli::attribute::AttributeArgs),
    /// Render a scores file of `retrace attribute` as a self-contained HTML report or a PDF.
    Report(cli::report::ReportArgs),
    /// Open the desktop viewer on a model and its training data.
    #[cfg(feature = "viewer")]
    Gui(cli::gui::GuiArgs),
    /// Describe a model directory (retrace's or diffusers') or a dataset spec.
    Info(cli::info::InfoArgs),
    /// Write a model's weights in another framework's layout (a diffusers pipeline).
    Export(cli::export::ExportArgs),
    /// List the attribution methods, what they need and their parameters.
    Methods(cli::methods::MethodsArgs),
    /// Evaluate attribution methods: build an LDS ground truth, merge its shards, score methods.
    Eval {
        #[command(subcommand)]
        command: cli::eval::EvalCommand,
    },
    /// Measure the heavy passes (forward+backward, index build, K-FAC factors) and query
    /// latency on the chosen device.
    Bench(cli::bench::BenchArgs),
    /// List the compute devices of each runtime (wgpu adapters, CUDA) and the one chosen.
    Devices,
}

/// Keeps glibc from serving every tensor of a few megabytes with a fresh mapping: by default it
/// maps large blocks anew and unmaps them on free, so each layer of every forward and backward
/// pass page-faults and zeroes its buffers again (page faults and memset were about 6% of a
/// profiled training step). Blocks up to 32 MiB (glibc's largest threshold) now come from the
/// heap, which keeps its freed memory. Measured on the 2-core CPU, three alternating runs of
/// `retrace bench --batch 32 --iterations 4` with and without: forward+backward 35.7–37.4 vs
/// 31.4–31.9 example·timesteps/s (+13–17%). (mimalloc as the global allocator gained nothing.)
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Keeps burn's default device on the host. retrace passes its chosen device to every tensor it
/// makes, but burn-optim 0.22 restores a resumed run's optimizer state onto `Device::default()`,
/// which in a build with wgpu is the first wgpu adapter: resuming a CPU run would bring up a GPU
/// runtime (lavapipe, on a machine without one) only to hold Adam's moments until the first step
/// moves them to the model's device, and would take the default wgpu device before the viewer can
/// share it with its window. With `BURN_DEVICE=flex` they wait in host memory. A value the user
/// set is kept.
fn keep_burn_default_on_host() {
    if std::env::var_os(retrace::device::BURN_DEFAULT_ENV).is_none() {
        // SAFETY: called first in `main`, before any thread exists that could read the environment.
        unsafe { std::env::set_var(retrace::device::BURN_DEFAULT_ENV, "flex") };
    }
}

/// On a machine with no display session at all (a headless server, CI), Mesa's Vulkan
/// device-select layer still tries to connect to a Wayland one while picking the default GPU,
/// and prints "error: XDG_RUNTIME_DIR is invalid or not set" — which reads as if retrace had
/// failed. With no display to pick a GPU by, the layer is turned off (`NODEVICE_SELECT=1`),
/// unless the user set it or chose a device through it (`MESA_VK_DEVICE_SELECT`). Where any
/// display is there (X11 included), the layer keeps choosing as it would.
fn quiet_headless_vulkan() {
    let set = |name: &str| std::env::var_os(name).is_some();
    let headless = !set("XDG_RUNTIME_DIR") && !set("WAYLAND_DISPLAY") && !set("DISPLAY");
    let chosen = set("MESA_VK_DEVICE_SELECT") || set("NODEVICE_SELECT");
    if headless && !chosen {
        // SAFETY: called at the start of `main`, before any thread exists that could read the
        // environment.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// Exit status of a command that failed on its input or environment (the message says why).
const EXIT_ERROR: i32 = 1;
/// Exit status of a bug: a panic inside retrace, reported as an internal error. (clap exits
/// with 2 on a malformed command line.)
const EXIT_INTERNAL: i32 = 70;

fn main() {
    keep_burn_default_on_host();
    quiet_headless_vulkan();
    tune_allocator();
    let cli = Cli::parse();
    if !opens_the_viewer(&cli) {
        end_quietly_on_a_closed_pipe();
    }
    report_panics_as_internal_errors();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) if cli::is_cancellation(&e) => {
            eprintln!("stopped; what was finished is kept, and running the same command again resumes from it");
            std::process::exit(EXIT_ERROR);
        }
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            std::process::exit(EXIT_ERROR);
        }
        Err(_) => std::process::exit(EXIT_INTERNAL),
    }
}

/// Lets a command whose output pipe closes (`retrace methods | head`) end quietly, as other
/// command-line tools do, instead of reporting the failed write as an internal error: Rust
/// ignores SIGPIPE, so every later `println!` would panic. Not for the viewer, which must not
/// die with the terminal it was started from.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: restores the default disposition of one signal before any other thread runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Replaces Rust's panic message with an error that says what happened and that it is
/// retrace's fault, not the user's: where (file and line) and what, plus the backtrace when
/// `RUST_BACKTRACE` asks for it. A panic on any thread (a worker's included) prints this; the
/// main thread's, or one that reaches it, ends the process with [`EXIT_INTERNAL`].
fn report_panics_as_internal_errors() {
    std::panic::set_hook(Box::new(|info| {
        if retrace::contained::is_contained() {
            return;
        }
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "an unknown panic".into());
        let place = info
            .location()
            .map_or(String::new(), |l| format!(" (at {}:{})", l.file(), l.line()));
        eprintln!(
            "error: internal error in retrace{place}: {what}\n\
             This is a bug, not a problem with your input; files written so far are complete \
             (every write is atomic) and a long job resumes from its last checkpoint. Please report it."
        );
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
    }));
}

/// Whether the command line opens the viewer (no subcommand, or `gui`).
fn opens_the_viewer(cli: &Cli) -> bool {
    #[cfg(feature = "viewer")]
    return matches!(cli.command, None | Some(Command::Gui(_)));
    #[cfg(not(feature = "viewer"))]
    return cli.command.is_none();
}

fn run(cli: Cli) -> Result<()> {
    #[cfg(feature = "viewer")]
    let command = cli.command.unwrap_or(Command::Gui(cli::gui::GuiArgs::defaults()));
    #[cfg(not(feature = "viewer"))]
    let command = cli.command.ok_or_else(|| {
        anyhow::anyhow!(
            "this retrace is headless (built without the `viewer` feature), so it has no viewer to open; \
             give a command (`retrace --help` lists them)"
        )
    })?;
    match command {
        Command::Train(args) => cli::train::run(args, cli.device),
        Command::Sample(args) => cli::sample::run(args, cli.device),
        Command::Index(args) => cli::index::run(args, cli.device),
        Command::Attribute(args) => cli::attribute::run(args, cli.device),
        Command::Report(args) => cli::report::run(args),
        #[cfg(feature = "viewer")]
        Command::Gui(args) => cli::gui::run(args, cli.device),
        Command::Info(args) => cli::info::run(args),
        Command::Export(args) => cli::export::run(args, cli.device),
        Command::Methods(args) => cli::methods::run(args),
        Command::Eval { command } => {
            let dev = cli::compute_device(cli.device)?;
            let (job, bar) = cli::terminal_job()?;
            let outcome = cli::eval::run(command, &dev, &job);
            bar.finish();
            outcome
        }
        Command::Bench(args) => cli::bench::run(args, cli.device),
        Command::Devices => cli::devices::run(cli.device),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_has_no_clashing_arguments() {
        super::Cli::command().debug_assert();
        // Flattened argument groups share one namespace of ids: a clash only shows in parsing.
        for args in [
            &["retrace", "eval", "remove-topk", "--k", "20", "--projection-k", "16"][..],
            &["retrace", "eval", "overlap", "--k", "5", "--projection-k", "16"],
            &["retrace", "eval", "lds", "--projection-k", "16", "--draws", "4"],
            &["retrace", "index", "--projection-k", "16", "--buckets", "5"],
            &[
                "retrace",
                "attribute",
                "--out",
                "a.json",
                "--measurement",
                "sqnorm",
                "--curvature",
                "ef",
                "--sharing",
                "reduce",
                "--checkpoints",
                "all",
            ],
            &["retrace", "sample", "--out", "s.png", "--sampler", "ddpm"],
        ] {
            if let Err(e) = <super::Cli as clap::Parser>::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }

    /// The `retrace` command lines of a cluster example: Slurm scripts' lines that start with
    /// `retrace`, and Kubernetes manifests' folded `args` blocks, with the scripts' variables
    /// (and the array index, as 0) substituted.
    fn example_commands(text: &str) -> Vec<String> {
        let mut vars = std::collections::HashMap::from([
            ("SLURM_ARRAY_TASK_ID".to_owned(), "0".to_owned()),
            ("JOB_COMPLETION_INDEX".to_owned(), "0".to_owned()),
        ]);
        let mut commands = Vec::new();
        let mut folded: Option<String> = None;
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(block) = folded.as_mut() {
                if trimmed.starts_with("retrace") || (!block.is_empty() && trimmed.starts_with("--")) {
                    block.push(' ');
                    block.push_str(trimmed);
                    continue;
                }
                commands.push(folded.take().unwrap());
            }
            if trimmed == "- >-" {
                folded = Some(String::new());
            } else if let Some((name, value)) = trimmed.split_once('=')
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            {
                vars.insert(name.to_owned(), shlex::split(value).unwrap_or_default().join(" "));
            } else if trimmed.starts_with("retrace ") {
                commands.push(trimmed.to_owned());
            }
        }
        commands.extend(folded);
        commands
            .into_iter()
            .map(|c| {
                let mut c = c.trim().to_owned();
                let mut names: Vec<&String> = vars.keys().collect();
                names.sort_by_key(|n| std::cmp::Reverse(n.len()));
                for name in names {
                    c = c
                        .replace(&format!("${{{name}}}"), &vars[name])
                        .replace(&format!("${name}"), &vars[name]);
                }
                c
            })
            .collect()
    }

    #[test]
    fn the_cluster_examples_run_valid_commands() {
        let examples = [
            ("index-shards.slurm", include_str!("../docs/cluster/index-shards.slurm")),
            ("index-merge.slurm", include_str!("../docs/cluster/index-merge.slurm")),
            ("lds-shards.slurm", include_str!("../docs/cluster/lds-shards.slurm")),
            (
                "index-shards-job.yaml",
                include_str!("../docs/cluster/index-shards-job.yaml"),
            ),
            (
                "index-merge-job.yaml",
                include_str!("../docs/cluster/index-merge-job.yaml"),
            ),
            (
                "lds-shards-job.yaml",
                include_str!("../docs/cluster/lds-shards-job.yaml"),
            ),
        ];
        for (file, text) in examples {
            let commands = example_commands(text);
            assert!(!commands.is_empty(), "{file} runs no retrace command");
            for command in commands {
                let words = shlex::split(&command).unwrap_or_else(|| panic!("{file}: cannot split {command:?}"));
                assert!(!command.contains('$'), "{file}: unsubstituted variable in {command:?}");
                if let Err(e) = <super::Cli as clap::Parser>::try_parse_from(&words) {
                    panic!("{file}: {command:?}: {e}");
                }
            }
        }
    }
}
