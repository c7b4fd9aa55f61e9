//! `setpoint tenant`: what a tenant pod runs. It holds the pod's claim (so the node keeps the
//! tenant admitted) while following the tenant on its node, through the endpoint the setpoint
//! DRA driver's CDI device gave the container, and ends as the tenant ends: a job's pod
//! exits 0 when the job completes and 1 when it fails; a service's runs while the node
//! serves it. Its last line on ending is the pod's termination message, which the operator
//! shows in the object's status.

use std::time::{Duration, Instant};

use super::{Exit, input_error};
use crate::cli::TenantArgs;
use crate::client::{Client, ClientError};
use crate::node::services::ServiceState;
use crate::node::{JobState, JobView, ServiceView};

/// Runs until the tenant ends (or the node is gone for `--grace`).
pub fn run(args: TenantArgs) -> anyhow::Result<()> {
    let endpoint = env("SETPOINT_ENDPOINT")?;
    let tenant = env("SETPOINT_TENANT")?;
    let kind = env("SETPOINT_TENANT_KIND")?;
    let client = Client::new(&endpoint).map_err(|e| {
        input_error(format!(
            "SETPOINT_ENDPOINT {endpoint:?} is not a daemon's URL: {e}"
        ))
    })?;
    let mut follow = Follow {
        client,
        args,
        last_ok: Instant::now(),
        said: String::new(),
    };
    match kind.as_str() {
        "job" => follow.job(&tenant),
        "service" => follow.service(&tenant),
        other => Err(input_error(format!(
            "SETPOINT_TENANT_KIND must be \"job\" or \"service\", got {other:?}"
        ))),
    }
}

fn env(key: &str) -> anyhow::Result<String> {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            input_error(format!(
                "{key} is not set: `setpoint tenant` runs in a pod whose claim the setpoint DRA \
             driver prepared (its CDI device sets SETPOINT_ENDPOINT, SETPOINT_TENANT and \
             SETPOINT_TENANT_KIND)"
            ))
        })
}

struct Follow {
    client: Client,
    args: TenantArgs,
    /// When the node last answered.
    last_ok: Instant,
    /// The last line printed, so that only changes are printed.
    said: String,
}

impl Follow {
    fn job(&mut self, tenant: &str) -> anyhow::Result<()> {
        let path = format!("/v1/jobs/{tenant}");
        loop {
            if let Some(answer) = self.read(&path)? {
                let job: JobView = self.client.read_answer("GET", &path, answer)?;
                let line = super::wait::final_line(&job);
                match job.state {
                    JobState::Completed => {
                        println!("{line}");
                        return Ok(());
                    }
                    JobState::Failed | JobState::Cancelled => return Err(exit(line)),
                    _ => self.say(line),
                }
            }
            std::thread::sleep(self.args.interval);
        }
    }

    fn service(&mut self, tenant: &str) -> anyhow::Result<()> {
        let path = format!("/v1/services/{tenant}");
        loop {
            if let Some(answer) = self.read(&path)? {
                let svc: ServiceView = self.client.read_answer("GET", &path, answer)?;
                let state = crate::client::table::cell(&svc.state);
                if svc.state == ServiceState::Failed {
                    let why = svc.error.unwrap_or_else(|| "no reason given".into());
                    return Err(exit(format!("service {tenant} failed: {why}")));
                }
                self.say(format!("service {tenant} {state}"));
            }
            std::thread::sleep(self.args.interval);
        }
    }

    /// The node's answer at `path`; `None` while it cannot be reached (within the grace);
    /// an error once it has been gone too long, or says the tenant is unknown.
    fn read(&mut self, path: &str) -> anyhow::Result<Option<serde_json::Value>> {
        match self.client.get(path) {
            Ok(v) => {
                self.last_ok = Instant::now();
                Ok(Some(v))
            }
            Err(ClientError::Api {
                status: 404,
                message,
            }) => Err(exit(format!(
                "the node no longer knows this tenant ({message}); its claim was released or \
                 the node restarted"
            ))),
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Transport { .. })) => {
                let gone = self.last_ok.elapsed();
                if gone >= self.args.grace {
                    return Err(exit(format!(
                        "the node's daemon has not answered for {}: {e}",
                        humantime::format_duration(round_s(gone))
                    )));
                }
                self.say(format!("waiting for the node's daemon: {e}"));
                Ok(None)
            }
            Err(e) => Err(anyhow::Error::new(e)),
        }
    }

    fn say(&mut self, line: String) {
        if line != self.said {
            eprintln!("{line}");
            self.said = line;
        }
    }
}

fn round_s(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn exit(message: String) -> anyhow::Error {
    anyhow::Error::new(Exit { code: 1, message })
}
