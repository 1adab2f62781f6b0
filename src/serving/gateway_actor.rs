//! The gateway actor: owns the HTTP server (axum, from pdserve-gateway). Started
//! with the server's configuration and backend; stopping the actor (or the
//! shutdown signal) makes the server stop taking requests and drain.

use std::future::Future;
use std::sync::Arc;

use anyhow::Result;
use pdserve_gateway::backend::ServingBackend;
use pdserve_gateway::config::GatewayConfig;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

struct GatewayActor;

struct Args {
    config: GatewayConfig,
    backend: Arc<dyn ServingBackend>,
    done: oneshot::Sender<std::io::Result<()>>,
}

struct State {
    stop: Option<oneshot::Sender<()>>,
}

enum Msg {}
impl ractor::Message for Msg {}

impl Actor for GatewayActor {
    type Msg = Msg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(
        &self,
        _myself: ActorRef<Msg>,
        args: Args,
    ) -> Result<State, ActorProcessingErr> {
        let (stop, stopped) = oneshot::channel::<()>();
        let listen = args.config.listen;
        tokio::spawn(async move {
            let r = pdserve_gateway::serve(args.config, args.backend, async {
                let _ = stopped.await;
            })
            .await;
            let _ = args.done.send(r);
        });
        tracing::info!(%listen, "HTTP server starting");
        Ok(State { stop: Some(stop) })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Msg>,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(s) = st.stop.take() {
            let _ = s.send(());
        }
        Ok(())
    }
}

/// Runs the HTTP server until `shutdown` resolves (or it fails), then drains it.
pub async fn run(
    config: GatewayConfig,
    backend: Arc<dyn ServingBackend>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let listen = config.listen;
    let (done, mut finished) = oneshot::channel();
    let (actor, handle) = Actor::spawn(
        None,
        GatewayActor,
        Args {
            config,
            backend,
            done,
        },
    )
    .await?;
    eprintln!("pdserve: OpenAI API on http://{listen}/v1");
    tokio::select! {
        _ = shutdown => {}
        r = &mut finished => {
            actor.stop(None);
            let _ = handle.await;
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("HTTP server on {listen}: {e}")),
                Err(_) => Err(anyhow::anyhow!("HTTP server on {listen} stopped")),
            };
        }
    }
    actor.stop(None);
    let _ = handle.await;
    match finished.await {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("HTTP server on {listen}: {e}")),
        Err(_) => Ok(()),
    }
}
