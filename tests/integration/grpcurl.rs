//! The real grpcurl against keyward: reflection (list, describe), health, and
//! Register -> Login -> Authenticate in JSON, as an operator would do it.

use crate::harness::*;

#[tokio::test]
async fn grpcurl_lists_describes_checks_health_and_logs_in() {
    let app = TestApp::start().await;
    let addr = app.addr.to_string();
    let email = email("grpcurl");
    let result = tokio::task::spawn_blocking(move || {
        let (ok, list) = grpcurl(&["-plaintext", &addr, "list"]);
        assert!(ok, "{list}");
        for service in [
            "keyward.v1.AuthService",
            "keyward.v1.OtpService",
            "keyward.v1.OrgService",
            "keyward.v1.UserService",
            "grpc.health.v1.Health",
            "envoy.service.auth.v3.Authorization",
        ] {
            assert!(
                list.lines().any(|l| l.trim() == service),
                "{service} not listed:\n{list}"
            );
        }
        let (ok, described) = grpcurl(&["-plaintext", &addr, "describe", "keyward.v1.AuthService"]);
        assert!(ok, "{described}");
        assert!(
            described.contains(
                "rpc Login ( .keyward.v1.LoginRequest ) returns ( .keyward.v1.LoginResponse );"
            ),
            "{described}"
        );
        let (ok, described) =
            grpcurl(&["-plaintext", &addr, "describe", "keyward.v1.LoginResponse"]);
        assert!(
            ok && described.contains(".keyward.v1.TokenPair tokens = 1;")
                && described.contains(".keyward.v1.MfaChallenge mfa_challenge = 2;"),
            "{described}"
        );
        let (ok, described) = grpcurl(&["-plaintext", &addr, "describe", "keyward.v1.TokenPair"]);
        assert!(ok && described.contains("refresh_token"), "{described}");
        // The field_behavior annotations come with the descriptors (their vendored proto too).
        let (ok, described) =
            grpcurl(&["-plaintext", &addr, "describe", "keyward.v1.LoginRequest"]);
        assert!(
            ok && described.contains("(.google.api.field_behavior) = REQUIRED"),
            "{described}"
        );

        let (ok, health) = grpcurl(&[
            "-plaintext",
            "-d",
            r#"{"service":"keyward.v1.AuthService"}"#,
            &addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(ok, "{health}");
        assert_eq!(json(&health)["status"], "SERVING");

        let register =
            format!(r#"{{"email":"{email}","password":"{PASSWORD}","display_name":"Grace"}}"#);
        let (ok, out) = grpcurl(&[
            "-plaintext",
            "-d",
            &register,
            &addr,
            "keyward.v1.AuthService/Register",
        ]);
        assert!(ok, "{out}");
        assert_eq!(json(&out)["user"]["email"], email.as_str());

        let login = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
        let (ok, out) = grpcurl(&[
            "-plaintext",
            "-d",
            &login,
            &addr,
            "keyward.v1.AuthService/Login",
        ]);
        assert!(ok, "{out}");
        let pair = &json(&out)["tokens"];
        let access = pair["accessToken"].as_str().unwrap().to_string();
        assert!(pair["refreshToken"].as_str().unwrap().starts_with("kwr_"));

        let auth = format!(r#"{{"access_token":"{access}"}}"#);
        let (ok, out) = grpcurl(&[
            "-plaintext",
            "-d",
            &auth,
            &addr,
            "keyward.v1.AuthService/Authenticate",
        ]);
        assert!(ok, "{out}");
        assert_eq!(json(&out)["principal"]["email"], email.as_str());

        let (ok, out) = grpcurl(&[
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {access}"),
            &addr,
            "keyward.v1.AuthService/GetMe",
        ]);
        assert!(ok, "{out}");
        assert_eq!(json(&out)["user"]["displayName"], "Grace");

        // Envoy's Check, by hand, as an operator tries a sidecar's question (README's example).
        let (ok, described) = grpcurl(&[
            "-plaintext",
            &addr,
            "describe",
            "envoy.service.auth.v3.Authorization",
        ]);
        assert!(ok && described.contains("rpc Check"), "{described}");
        let check = format!(
            r#"{{"attributes":{{"request":{{"http":{{"method":"GET","path":"/notes","headers":{{"authorization":"Bearer {access}"}}}}}}}}}}"#
        );
        let (ok, out) = grpcurl(&[
            "-plaintext",
            "-d",
            &check,
            &addr,
            "envoy.service.auth.v3.Authorization/Check",
        ]);
        assert!(ok, "{out}");
        let answer = json(&out);
        assert!(answer["okResponse"].is_object(), "allowed: {out}");
        assert!(out.contains("x-keyward-user-id"), "{out}");

        // A refusal shows grpcurl the status and the stable reason.
        let (ok, out) = grpcurl(&[
            "-plaintext",
            "-d",
            &format!(r#"{{"email":"{email}","password":"nope nope nope"}}"#),
            &addr,
            "keyward.v1.AuthService/Login",
        ]);
        assert!(!ok);
        assert!(
            out.contains("Code: Unauthenticated") && out.contains("INVALID_CREDENTIALS"),
            "{out}"
        );
    })
    .await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
