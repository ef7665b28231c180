//! `retrace gui`: open the desktop viewer on a model and its training data.

use anyhow::{Context, Result};

use retrace::device::{self, DeviceRequest};

use super::args::{ConditionArgs, IndexTarget};

/// Open the desktop viewer on a model and its training data.
#[derive(clap::Args)]
pub struct GuiArgs {
    /// The model, the data and the index settings the viewer starts with (as for `retrace
    /// index`; the viewer's index panel changes them later).
    #[command(flatten)]
    target: IndexTarget,
    /// Methods ticked at start, comma-separated (default: retrac,kfac).
    #[arg(long, value_delimiter = ',', value_parser = super::attribute::parse_method)]
    pub method: Vec<String>,
    /// Method parameters at start, as KEY=VALUE (repeatable; `retrace methods` lists them).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The class and guidance scale Generate starts with (a class-conditional model).
    #[command(flatten)]
    condition: ConditionArgs,
}

impl GuiArgs {
    /// What `retrace` with no subcommand opens: every option at its default.
    pub fn defaults() -> Self {
        use clap::{Args, FromArgMatches};
        let command = Self::augment_args(clap::Command::new("gui"));
        Self::from_arg_matches(&command.get_matches_from(["gui"])).expect("the defaults parse")
    }
}

/// Runs `retrace gui` on the requested compute device.
pub fn run(args: GuiArgs, device: Option<DeviceRequest>) -> Result<()> {
    let GuiArgs {
        target,
        method,
        set,
        condition,
    } = args;
    let mut parameters = retrace::attribution::Parameters::default();
    for pair in &set {
        parameters.set_pair(pair)?;
    }
    let session = device::choose_shared(device)
        .map_err(anyhow::Error::from)
        .and_then(|dev| {
            eprintln!("compute device: {dev}");
            let session = retrace::session::Session::open(&target.model_root(), target.data_spec(), dev)?;
            let index = target.index_settings(&session.model)?;
            Ok(session.with_index(index))
        });
    let class = match &session {
        Ok(session) => condition.named(&session.model.info)?,
        Err(_) => None,
    };
    let start = retrace::app::Start {
        methods: method,
        parameters,
        class: class.and_then(|c| match c {
            retrace::diffusion::Condition::Class(label) => Some(label),
            retrace::diffusion::Condition::Unconditional => None,
        }),
        guidance: condition.guidance(),
    };
    retrace::app::run(session, start).context("cannot open the window")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use retrace::data::bundled_model_dir;

    #[test]
    fn the_viewer_starts_with_the_standard_index_settings_unless_told_otherwise() {
        let model = retrace::diffusion::ModelDir::open(&bundled_model_dir()).unwrap();
        let standard = retrace::index::IndexSettings::standard(&model);
        let defaults = GuiArgs::defaults().target.index_settings(&model).unwrap();
        assert_eq!(format!("{defaults:?}"), format!("{standard:?}"));
        let command = <GuiArgs as clap::Args>::augment_args(clap::Command::new("gui"));
        let matches = command.get_matches_from(["gui", "--f16", "--buckets", "4"]);
        let args = <GuiArgs as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        let chosen = args.target.index_settings(&model).unwrap();
        assert_eq!(chosen.storage, retrace::index::Storage::F16);
        assert_eq!(chosen.plan.buckets, 4);
        assert_ne!(
            chosen.dir, standard.dir,
            "indexes of other settings live beside the standard one"
        );
    }
}
