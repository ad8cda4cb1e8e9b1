#!/usr/bin/env bash
# Prints the first calls to try against a dev keyward (scripts/dev.sh prints this at start):
# register, verify the email with the code from the dev mailbox, log in, authenticate. Every line
# works pasted as it is into a shell in any directory (tests/integration/cli.rs runs it).
#
#   scripts/dev-walkthrough.sh ADDR MAILBOX_DIR
set -euo pipefail
addr="$1"
mailbox="$2"
cat <<TXT
grpcurl -plaintext $addr list
grpcurl -plaintext $addr grpc.health.v1.Health/Check
grpcurl -plaintext -d '{"email":"ada@example.com","password":"correct horse battery staple","display_name":"Ada"}' $addr keyward.v1.AuthService/Register
# dev mode writes each mail to $mailbox (and a "DEV MAIL" line to keyward's log): the code is in ada@example.com.code
until [ -s '$mailbox/ada@example.com.code' ]; do sleep 0.2; done; grpcurl -plaintext -d "{\"email\":\"ada@example.com\",\"code\":\"\$(cat '$mailbox/ada@example.com.code')\"}" $addr keyward.v1.OtpService/VerifyEmail
TOKEN=\$(grpcurl -plaintext -d '{"email":"ada@example.com","password":"correct horse battery staple"}' $addr keyward.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"]["accessToken"])')
grpcurl -plaintext -d "{\"access_token\":\"\$TOKEN\"}" $addr keyward.v1.AuthService/Authenticate
TXT
