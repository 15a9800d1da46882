//! The synthetic runtime: instances without a display, for hosts with no X server and for
//! tests of everything around the runtime.
//!
//! Starting and stopping only flip a `running` flag, persisted in `<paths.root>/synthetic.json`
//! so a restarted node sees the same thing the old one did. Commands still run in the
//! instance's bwrap sandbox (no `DISPLAY`), apps install with the x11 package format, input
//! is accepted and counted but goes nowhere, and the stream is a GStreamer test pattern with a
//! [`SYNTHETIC_TONE_HZ`] sine as its sound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use super::common::{ensure_data_dir, lock, run_shell, write_atomic};
use super::package::install_tar_package;
use super::sandbox::{HostLayout, SandboxSpec};
use super::{
    AudioSource, CaptureSource, CommandOutput, CommandSpec, InputEvent, InstancePaths,
    InstanceSpec, Runtime, RuntimeError,
};

const STATE_FILE: &str = "synthetic.json";
/// The synthetic instances' sound: concert A, easy to check by ear and by zero crossings.
pub const SYNTHETIC_TONE_HZ: u32 = 440;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SyntheticState {
    running: bool,
}

/// Display-less runtime; see the module docs.
pub struct SyntheticRuntime {
    bwrap: PathBuf,
    layout: HostLayout,
    inputs: Mutex<HashMap<String, u64>>,
}

impl SyntheticRuntime {
    pub fn new(bwrap: PathBuf) -> Result<Self, RuntimeError> {
        Ok(Self {
            bwrap,
            layout: HostLayout::scan()?,
            inputs: Mutex::new(HashMap::new()),
        })
    }

    /// How many input events an instance has accepted since this runtime was created.
    pub fn input_count(&self, instance_id: &str) -> u64 {
        lock(&self.inputs).get(instance_id).copied().unwrap_or(0)
    }

    async fn set_running(&self, paths: &InstancePaths, running: bool) -> Result<(), RuntimeError> {
        tokio::fs::create_dir_all(&paths.root).await?;
        let bytes =
            serde_json::to_vec(&SyntheticState { running }).map_err(std::io::Error::other)?;
        write_atomic(&paths.root.join(STATE_FILE), &bytes).await?;
        Ok(())
    }
}

#[async_trait]
impl Runtime for SyntheticRuntime {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    async fn start(&self, _spec: &InstanceSpec, paths: &InstancePaths) -> Result<(), RuntimeError> {
        ensure_data_dir(paths).await?;
        self.set_running(paths, true).await
    }

    async fn stop(&self, _spec: &InstanceSpec, paths: &InstancePaths) -> Result<(), RuntimeError> {
        match tokio::fs::metadata(&paths.root).await {
            // Nothing to stop for an instance whose files are gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            _ => self.set_running(paths, false).await,
        }
    }

    async fn is_running(&self, _spec: &InstanceSpec, paths: &InstancePaths) -> bool {
        match tokio::fs::read(paths.root.join(STATE_FILE)).await {
            Ok(bytes) => serde_json::from_slice::<SyntheticState>(&bytes).is_ok_and(|s| s.running),
            Err(_) => false,
        }
    }

    async fn run_command(
        &self,
        _spec: &InstanceSpec,
        paths: &InstancePaths,
        command: &CommandSpec,
    ) -> Result<CommandOutput, RuntimeError> {
        let sb = SandboxSpec::for_instance(paths);
        run_shell(&self.bwrap, &self.layout, &sb, command).await
    }

    async fn install_app(&self, paths: &InstancePaths, package: &Path) -> Result<(), RuntimeError> {
        install_tar_package(&self.bwrap, &self.layout, paths, package)
            .await
            .map(|_| ())
    }

    async fn inject_input(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
        _event: &InputEvent,
    ) -> Result<(), RuntimeError> {
        if !self.is_running(spec, paths).await {
            return Err(RuntimeError::NotRunning(spec.instance_id.clone()));
        }
        *lock(&self.inputs)
            .entry(spec.instance_id.clone())
            .or_insert(0) += 1;
        Ok(())
    }

    fn capture_source(&self, spec: &InstanceSpec, _paths: &InstancePaths) -> CaptureSource {
        CaptureSource::TestPattern {
            width: spec.width,
            height: spec.height,
        }
    }

    fn audio_source(&self, _spec: &InstanceSpec, _paths: &InstancePaths) -> Option<AudioSource> {
        Some(AudioSource::TestTone {
            freq_hz: SYNTHETIC_TONE_HZ,
            beeps: false,
        })
    }
}
