//! Builds the gRPC server: limits, per-RPC spans and metrics, health, reflection and the keyward
//! services, with the Prometheus endpoint on a listener of its own, then serves until `shutdown`
//! resolves and in-flight calls have drained.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;

use crate::app::App;
use crate::grpc::ext_authz::ExtAuthz;
use crate::grpc::pb::auth_service_server::AuthServiceServer;
use crate::grpc::pb::federation_service_server::FederationServiceServer;
use crate::grpc::pb::mfa_service_server::MfaServiceServer;
use crate::grpc::pb::org_service_server::OrgServiceServer;
use crate::grpc::pb::otp_service_server::OtpServiceServer;
use crate::grpc::pb::permission_service_server::PermissionServiceServer;
use crate::grpc::pb::service_account_service_server::ServiceAccountServiceServer;
use crate::grpc::pb::user_service_server::UserServiceServer;
use crate::grpc::{auth::Auth, codec, org::Org, otp::Otp, pb};
use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// The fully-qualified names of keyward's services (health reports each).
pub const SERVICES: &[&str] = &[
    "keyward.v1.AuthService",
    "keyward.v1.OtpService",
    "keyward.v1.OrgService",
    "keyward.v1.UserService",
    "keyward.v1.MfaService",
    "keyward.v1.PermissionService",
    "keyward.v1.ServiceAccountService",
    "keyward.v1.FederationService",
    "envoy.service.auth.v3.Authorization",
];

/// The grpc.health.v1 service name a liveness probe asks for: SERVING while the process runs.
pub const LIVENESS_SERVICE: &str = "keyward.liveness";

async fn set_all(health: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    for name in SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// How often a serving replica asks the database whether it is there.
const DATABASE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one such check may take before it counts as a failure.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed checks in a row before the replica reports NOT_SERVING (one slow answer is not an
/// outage; the pings have a connection of their own, so load on the main pool does not count).
const DATABASE_FAILURES_TO_STOP: u32 = 2;

/// How often (in database checks, one a second) a replica looks for registrations that died
/// midway.
const SETTLE_EVERY_CHECKS: u64 = 10;

/// Finishes or takes back registrations that died midway (see
/// `App::finish_interrupted_registrations`); a failure is logged and tried again later.
async fn settle_registrations(app: &App) {
    match app.finish_interrupted_registrations().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(settled = n, "settled registrations that died midway"),
        Err(e) => tracing::warn!(error = %e, "could not settle interrupted registrations"),
    }
}

/// Applies `permissions_file`, if set, once the database is ready (a file that does not read
/// was refused at start-up; one the database refuses is logged and left as it is).
async fn apply_permission_file(app: &App) {
    let Some(path) = &app.config.permissions_file else {
        return;
    };
    let caller = crate::app::Caller {
        client_address: "permissions_file".into(),
        rate_limit_key: String::new(),
        user_agent: "keyward serve".into(),
    };
    let applied = match crate::app::permissions::load_permission_file(path) {
        Ok(file) => app
            .apply_permissions(&file, false, &caller)
            .await
            .map_err(|e| anyhow::anyhow!("{e}")),
        Err(e) => Err(e),
    };
    match applied {
        Ok(report) => tracing::info!(
            file = %path.display(),
            created = report.created.len(),
            updated = report.updated.len(),
            deleted = report.deleted.len(),
            unchanged = report.unchanged.len(),
            "permission catalogue applied"
        ),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "permission catalogue not applied")
        }
    }
}

/// How often the mail outbox's gauges are refreshed (one count and one indexed read).
const OUTBOX_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Keeps the mail outbox's depth and oldest age current for `/metrics`, while the database is
/// ready (a failure leaves the last values and is logged at debug level).
async fn watch_outbox(app: Arc<App>) {
    loop {
        tokio::time::sleep(OUTBOX_GAUGES_EVERY).await;
        if app.ensure_ready().is_err() {
            continue;
        }
        let now = app.now();
        let looked =
            tokio::time::timeout(DATABASE_CHECK_TIMEOUT, app.store.mail_outbox.backlog(now)).await;
        match looked {
            Ok(Ok((pending, oldest))) => crate::metrics::mail_outbox(pending, oldest),
            Ok(Err(e)) => tracing::debug!(error = %e, "could not measure the mail outbox"),
            Err(_) => tracing::debug!("measuring the mail outbox timed out"),
        }
    }
}

/// Keeps health and `App::ensure_ready` in step with the database, for the life of the server.
/// While the database is gone, calls fail at once with UNAVAILABLE/NOT_READY instead of each
/// waiting for the driver's server selection, and load balancers stop sending traffic here.
async fn watch_database(app: Arc<App>, health: HealthReporter) {
    let mut delay = Duration::from_millis(100);
    // Start-up: ping and create the indexes, with backoff.
    loop {
        match app.store.ready().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "database not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    settle_registrations(&app).await;
    apply_permission_file(&app).await;
    if let Err(e) = app.reload_catalogue().await {
        tracing::warn!(error = %e, "could not load the permission catalogue; retrying");
    }
    app.set_ready(true);
    set_all(&health, true).await;
    tracing::info!("database ready: serving");
    let mut failures = 0u32;
    let mut checks = 0u64;
    loop {
        tokio::time::sleep(DATABASE_CHECK_EVERY).await;
        checks += 1;
        if checks.is_multiple_of(SETTLE_EVERY_CHECKS) && app.ensure_ready().is_ok() {
            settle_registrations(&app).await;
        }
        let answered = matches!(
            tokio::time::timeout(DATABASE_CHECK_TIMEOUT, app.store.ping()).await,
            Ok(Ok(()))
        );
        // Other replicas' catalogue changes arrive within a check (session_cache_ttl is 1 s
        // at most 2 s; a check runs every second).
        if answered {
            if let Err(e) = app.reload_catalogue().await {
                tracing::warn!(error = %e, "could not reload the permission catalogue");
            }
        }
        match (answered, app.ensure_ready().is_ok()) {
            (true, true) => failures = 0,
            (true, false) => {
                // Back: make sure the indexes exist (a restored or new database may lack them).
                if let Err(e) = app.store.ready().await {
                    tracing::warn!(error = %e, "database answers but is not ready yet");
                    continue;
                }
                failures = 0;
                app.set_ready(true);
                set_all(&health, true).await;
                tracing::info!("database back: serving");
            }
            (false, ready) => {
                failures += 1;
                if ready && failures >= DATABASE_FAILURES_TO_STOP {
                    app.set_ready(false);
                    set_all(&health, false).await;
                    tracing::error!(failures, "database unreachable: not serving");
                }
            }
        }
    }
}

/// Serves `app` on `listener`, delivering queued mail through `mail_transport`, until
/// `shutdown` resolves: health turns NOT_SERVING, no new connections are accepted, in-flight
/// calls finish, then this returns.
pub async fn serve(
    app: Arc<App>,
    mail_transport: crate::mail::Transport,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let config = &app.config;
    codec::set_max_message_bytes(config.max_message_bytes);
    let (health, health_service) = tonic_health::server::health_reporter();
    set_all(&health, false).await;
    // Liveness: SERVING for as long as the process answers, whatever the database does. A
    // liveness probe must not follow a database outage (it would restart every replica at once);
    // readiness (`""` and the services) does.
    health
        .set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving)
        .await;

    // Health follows the database: SERVING once MongoDB answers and every index exists,
    // NOT_SERVING while it stops answering later, SERVING again when it is back.
    let ready_task = tokio::spawn(watch_database(Arc::clone(&app), health.clone()));
    let stop_watching = ready_task.abort_handle();

    // Mail delivery runs beside the server; queued mail survives a stop and is picked up by the
    // next replica to run.
    let mail_workers = crate::app::mail::spawn_workers(Arc::clone(&app), Arc::new(mail_transport));

    // The Prometheus endpoint and the outbox gauges, when metrics are on.
    let mut metrics_tasks = Vec::new();
    if let Some(metrics_listener) = metrics_listener {
        tracing::info!(addr = %metrics_listener.local_addr()?, "metrics at /metrics");
        metrics_tasks.push(tokio::spawn(crate::metrics::serve(metrics_listener)));
        metrics_tasks.push(tokio::spawn(crate::metrics::upkeep()));
        metrics_tasks.push(tokio::spawn(watch_outbox(Arc::clone(&app))));
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So grpcurl can print ErrorInfo / BadRequest / RetryInfo details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::grpc::ext_authz::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::grpc::ext_authz::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let auth = AuthServiceServer::new(Auth {
        app: Arc::clone(&app),
    })
    .max_decoding_message_size(config.max_message_bytes);
    let otp = OtpServiceServer::new(Otp {
        app: Arc::clone(&app),
    })
    .max_decoding_message_size(config.max_message_bytes);
    let org = OrgServiceServer::new(Org {
        app: Arc::clone(&app),
    })
    .max_decoding_message_size(config.max_message_bytes);
    let users = UserServiceServer::new(crate::grpc::users::Users {
        app: Arc::clone(&app),
    })
    .max_decoding_message_size(config.max_message_bytes);
    let mfa = MfaServiceServer::new(crate::grpc::mfa::Mfa {
        app: Arc::clone(&app),
    })
    .max_decoding_message_size(config.max_message_bytes);
    let permissions = PermissionServiceServer::new(crate::grpc::permissions::Permissions {
        app: Arc::clone(&app),
    })
    .max_decoding_message_size(config.max_message_bytes);
    let service_accounts =
        ServiceAccountServiceServer::new(crate::grpc::service_accounts::ServiceAccounts {
            app: Arc::clone(&app),
        })
        .max_decoding_message_size(config.max_message_bytes);
    let federation = FederationServiceServer::new(crate::grpc::federation::Federation {
        app: Arc::clone(&app),
    })
    .max_decoding_message_size(config.max_message_bytes);
    let ext_authz = AuthorizationServer::new(ExtAuthz {
        app: Arc::clone(&app),
    })
    .max_decoding_message_size(config.max_message_bytes);

    tracing::info!(addr = %listener.local_addr()?, "keyward listening");
    let result = Server::builder()
        .timeout(config.request_timeout)
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .load_shed(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .trace_fn(crate::telemetry::rpc_span)
        // Runs inside the span above: records the status code, scopes `enduser.id`, and counts
        // and times every RPC by service, method and status code.
        .layer(crate::telemetry::RpcOutcomeLayer)
        .layer(codec::MessageLimitLayer)
        // NOT_READY for every keyward RPC that needs the database while it is not ready.
        .layer(crate::grpc::readiness::ReadinessLayer::new(Arc::clone(
            &app,
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth)
        .add_service(otp)
        .add_service(org)
        .add_service(users)
        .add_service(mfa)
        .add_service(permissions)
        .add_service(service_accounts)
        .add_service(federation)
        .add_service(ext_authz)
        // No Nagle: gRPC writes small frames and waits for answers; delayed ACKs would stall them.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                shutdown.await;
                stop_watching.abort();
                tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
                set_all(&health, false).await;
            },
        )
        .await;
    // Stop the background tasks and wait until they have: a task still inside a database call
    // when the caller drops the runtime would find the driver's connection pool gone with it
    // (the driver panics then).
    ready_task.abort();
    let _ = ready_task.await;
    for worker in mail_workers.iter().chain(&metrics_tasks) {
        worker.abort();
    }
    for worker in mail_workers.into_iter().chain(metrics_tasks) {
        let _ = worker.await;
    }
    app.store.shutdown(Duration::from_secs(5)).await;
    tracing::info!("keyward stopped");
    Ok(result?)
}
