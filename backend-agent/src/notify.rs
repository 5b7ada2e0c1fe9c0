//! systemd notification for the backend: the watchdog is fed while the hub's accept loop
//! and the HTTP server run, and `STATUS=` says how many agents are connected and whether the
//! audit log can be written. Uses [`agentmesh_daemon::notify`] (the agent does too).

use agentmesh_daemon::notify::{spawn_watchdog, Probe};
use tokio::task::JoinHandle;

use crate::Backend;

impl Backend {
    /// Starts the watchdog/status task when run under systemd. It runs through the drain
    /// (status `draining; ...`, no keep-alives once the hub has stopped); abort it after
    /// [`Backend::shutdown`].
    pub fn spawn_watchdog(&self) -> Option<JoinHandle<()>> {
        let hub = self.hub_task.abort_handle();
        let http = self.http_task.abort_handle();
        let registry = self.registry.clone();
        let audit = self.audit.clone();
        let live = self.live.clone();
        let (http_addr, hub_addr) = (self.http_addr, self.hub_addr);
        spawn_watchdog(
            move || {
                let loops = !hub.is_finished() && !http.is_finished();
                let mut status = format!(
                    "{} agent(s) connected; hub {hub_addr}, API {http_addr}",
                    registry.connected_count()
                );
                if !loops {
                    status.push_str("; a main loop ended");
                }
                if !audit.is_healthy() {
                    status.push_str("; audit log NOT writable (commands refused)");
                }
                if live.draining() {
                    status = format!("draining; {status}");
                }
                Probe {
                    healthy: loops,
                    status,
                }
            },
            None,
        )
    }
}
