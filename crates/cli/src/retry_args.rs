//! `builderd build`'s retry policy for registry requests, in the shape of
//! the service's `retry_policy` (the service passes a build's policy here).

use std::time::Duration;

use builderd_oci::{Backoff, RetryCause, RetryPolicy};

#[derive(clap::Args)]
pub struct RetryArgs {
    /// How often a failed registry request is tried again (connection
    /// errors, 500/502/503/504, 429; a 404 or 401 never is).
    #[arg(long, value_name = "N", default_value_t = RetryPolicy::default().max_retries)]
    retries: u32,
    /// How the wait grows: exponential, linear or fixed.
    #[arg(long, value_name = "STRATEGY", value_parser = parse_backoff, default_value = "exponential")]
    retry_backoff: Backoff,
    /// The first wait (less up to a quarter, at random), e.g. 200ms, 2s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "200ms")]
    retry_base_delay: Duration,
    /// The longest wait (a registry's Retry-After may ask for longer).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    retry_max_delay: Duration,
    /// The causes worth a retry: NETWORK_ERROR, REGISTRY_RATE_LIMIT (others fail at once).
    #[arg(long, value_name = "CAUSE,...", value_delimiter = ',', value_parser = parse_cause,
          default_value = "NETWORK_ERROR,REGISTRY_RATE_LIMIT")]
    retry_on: Vec<RetryCause>,
    /// A registry connection that sends nothing for this long fails its
    /// request, which is then tried again (a download resumes where it stopped).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    stall_timeout: Duration,
}

fn parse_backoff(s: &str) -> Result<Backoff, String> {
    Backoff::parse(s).ok_or_else(|| format!("{s:?}: use exponential, linear or fixed"))
}

fn parse_cause(s: &str) -> Result<RetryCause, String> {
    RetryCause::parse(s).ok_or_else(|| {
        format!("{s:?}: use NETWORK_ERROR, REGISTRY_RATE_LIMIT or TEMPORARY_RESOURCE_ERROR")
    })
}

impl RetryArgs {
    /// The policy, within the bounds every policy keeps.
    pub fn policy(&self) -> anyhow::Result<RetryPolicy> {
        let policy = RetryPolicy {
            max_retries: self.retries,
            backoff: self.retry_backoff,
            base_delay: self.retry_base_delay,
            max_delay: self.retry_max_delay.max(self.retry_base_delay),
            retry_on: self.retry_on.clone(),
        };
        policy
            .check()
            .map_err(|e| anyhow::anyhow!("the retry options: {e}"))?;
        Ok(policy)
    }

    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }
}
