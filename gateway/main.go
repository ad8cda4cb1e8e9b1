// Command keyward-gateway is keyward's REST sidecar: a grpc-gateway reverse proxy that turns JSON
// over HTTP/1.1 into keyward's gRPC calls. The routes come from gateway/keyward.yaml (compiled into
// the generated *.pb.gw.go files by scripts/gateway.sh); this file only wires them up, maps gRPC
// errors to HTTP answers that keep keyward's stable reasons, and runs the HTTP server.
//
// It is built offline against Debian's Go packages (grpc-gateway v1, golang/protobuf 1.3, grpc-go
// 1.33) in GOPATH mode, so it uses only their APIs.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/golang/protobuf/proto"
	"github.com/golang/protobuf/ptypes"
	"github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	keywardv1 "keyward/gen/keywardv1"
)

// The marshaler for request and response bodies: proto field names (snake_case, as in the
// protos and the OpenAPI file), enums as names, and fields at their default value included so
// clients see `"pending_verification": false` rather than nothing.
var marshaler = &runtime.JSONPb{OrigName: true, EmitDefaults: true}

func main() {
	listen := flag.String("listen", ":8080", "HTTP listen address")
	endpoint := flag.String("grpc-endpoint", "localhost:50051", "keyward's gRPC address (plaintext)")
	shutdownGrace := flag.Duration("shutdown-grace", 15*time.Second, "how long SIGTERM waits for in-flight requests")
	// Limits on what one client can make the gateway hold: a body is read whole before it is
	// decoded, and a connection that trickles its request in (slowloris) ties up a goroutine and
	// a socket until a timeout ends it.
	maxBodyBytes := flag.Int64("max-body-bytes", 1<<20, "largest request body; larger ones answer 413")
	readHeaderTimeout := flag.Duration("read-header-timeout", 5*time.Second, "time to receive a request's headers")
	readTimeout := flag.Duration("read-timeout", 15*time.Second, "time to receive a whole request, headers and body")
	writeTimeout := flag.Duration("write-timeout", 30*time.Second, "time from the end of a request's headers to the end of its answer")
	idleTimeout := flag.Duration("idle-timeout", 60*time.Second, "how long a keep-alive connection may wait for its next request")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.LUTC)
	if *maxBodyBytes <= 0 {
		log.Fatalf("keyward-gateway: --max-body-bytes must be positive")
	}
	for name, d := range map[string]time.Duration{
		"read-header-timeout": *readHeaderTimeout, "read-timeout": *readTimeout,
		"write-timeout": *writeTimeout, "idle-timeout": *idleTimeout,
	} {
		if d <= 0 {
			log.Fatalf("keyward-gateway: --%s must be positive", name)
		}
	}

	// One connection to keyward, shared by every route. Dialing is lazy: the gateway starts even
	// when keyward is not up yet, and calls answer 503 until it is.
	conn, err := grpc.Dial(*endpoint, grpc.WithInsecure(), grpc.WithUnaryInterceptor(checkCall))
	if err != nil {
		log.Fatalf("keyward-gateway: cannot dial %s: %v", *endpoint, err)
	}
	defer conn.Close()

	runtime.HTTPError = writeGRPCError
	runtime.OtherErrorHandler = writeRoutingError
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler),
		runtime.WithIncomingHeaderMatcher(forwardHeader),
	)
	ctx := context.Background()
	for name, register := range map[string]func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		"AuthService":           keywardv1.RegisterAuthServiceHandler,
		"OtpService":            keywardv1.RegisterOtpServiceHandler,
		"OrgService":            keywardv1.RegisterOrgServiceHandler,
		"UserService":           keywardv1.RegisterUserServiceHandler,
		"MfaService":            keywardv1.RegisterMfaServiceHandler,
		"PermissionService":     keywardv1.RegisterPermissionServiceHandler,
		"ServiceAccountService": keywardv1.RegisterServiceAccountServiceHandler,
		"FederationService":     keywardv1.RegisterFederationServiceHandler,
	} {
		if err := register(ctx, mux, conn); err != nil {
			log.Fatalf("keyward-gateway: registering %s: %v", name, err)
		}
	}

	root := http.NewServeMux()
	// Liveness: the gateway process answers.
	root.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	// Readiness: keyward itself reports SERVING (grpc.health.v1), so a load balancer only sends
	// traffic to a gateway whose keyward can answer.
	health := healthpb.NewHealthClient(conn)
	root.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not serving"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "serving"})
	})
	root.Handle("/", redirectBrowserStart(bindFederationCallback(mux)))

	server := &http.Server{
		Addr:              *listen,
		Handler:           limitRequest(root, *maxBodyBytes, callBudget(*writeTimeout)),
		ReadHeaderTimeout: *readHeaderTimeout,
		ReadTimeout:       *readTimeout,
		WriteTimeout:      *writeTimeout,
		IdleTimeout:       *idleTimeout,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.ListenAndServe() }()
	log.Printf("keyward-gateway: listening on %s, forwarding to %s", *listen, *endpoint)

	// SIGTERM (Kubernetes) or ctrl-c: stop accepting, let in-flight requests finish, exit 0.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	select {
	case err := <-serveErr:
		log.Fatalf("keyward-gateway: %v", err)
	case sig := <-signals:
		log.Printf("keyward-gateway: %v received, draining for up to %v", sig, *shutdownGrace)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *shutdownGrace)
	defer cancel()
	if err := server.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("keyward-gateway: shutdown: %v", err)
		os.Exit(1)
	}
	log.Printf("keyward-gateway: stopped")
}

// The browser's federated sign-in: GET /v1/federation/{provider}/authorize starts it and answers
// 302 to the provider, keeping the flow's secret in a cookie (__Host- prefixed: Secure, Path=/,
// no Domain, so no sibling subdomain can plant one; HttpOnly; SameSite=Lax; 10 minutes). GET
// /v1/federation/callback, the redirect URI registered at the provider, finishes it with the
// secret from that cookie and never from the URL. keyward derives the flow's PKCE verifier from
// the secret and refuses a state without its secret, so a callback URL is useless to anyone but
// the browser that started the flow: not to someone who intercepted it, and not to a victim an
// attacker sends the callback of the attacker's own sign-in (login CSRF).
const (
	federationCookie   = "__Host-keyward_federation"
	federationPath     = "/v1/federation/"
	federationMaxAge   = 600
	federationCallback = "/v1/federation/callback"
)

// bufferedResponse holds an answer of the mux so that it can be rewritten before it is sent.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bufferedResponse) WriteHeader(status int)      { b.status = status }

// redirectBrowserStart turns the JSON answer of GET /v1/federation/{provider}/authorize into a
// 302 to the provider with the flow's cookie; errors pass through as they are.
func redirectBrowserStart(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, federationPath) ||
			!strings.HasSuffix(r.URL.Path, "/authorize") {
			next.ServeHTTP(w, r)
			return
		}
		answer := &bufferedResponse{header: http.Header{}, status: http.StatusOK}
		next.ServeHTTP(answer, r)
		var started keywardv1.StartFederatedLoginResponse
		if answer.status != http.StatusOK ||
			marshaler.Unmarshal(answer.body.Bytes(), &started) != nil ||
			started.AuthorizationUrl == "" || started.FlowSecret == "" {
			for k, v := range answer.header {
				w.Header()[k] = v
			}
			w.WriteHeader(answer.status)
			w.Write(answer.body.Bytes())
			return
		}
		http.SetCookie(w, &http.Cookie{
			Name:     federationCookie,
			Value:    started.FlowSecret,
			Path:     "/",
			MaxAge:   federationMaxAge,
			HttpOnly: true,
			Secure:   true,
			SameSite: http.SameSiteLaxMode,
		})
		w.Header().Set("Location", started.AuthorizationUrl)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusFound)
	})
}

// bindFederationCallback gives the browser's callback its flow secret from the cookie only (a
// flow_secret in the URL is dropped), and refuses a callback without the cookie. It matches every
// path the router sends to the callback route, `/v1/federation/callback:...` included.
func bindFederationCallback(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, federationPath) {
			next.ServeHTTP(w, r)
			return
		}
		query := r.URL.Query()
		if _, given := query["flow_secret"]; given {
			query.Del("flow_secret")
		}
		if strings.HasPrefix(r.URL.Path, federationCallback) {
			if r.Method != http.MethodGet {
				writeGatewayError(w, http.StatusMethodNotAllowed, codes.InvalidArgument,
					"INVALID_ARGUMENT", "the callback is for browsers (GET); apps POST /v1/federation/finish")
				return
			}
			cookie, err := r.Cookie(federationCookie)
			if err != nil || cookie.Value == "" {
				writeGatewayError(w, http.StatusUnauthorized, codes.Unauthenticated,
					"FEDERATION_STATE_INVALID",
					"this sign-in was not started in this browser (or its cookie expired); start again")
				return
			}
			query.Set("flow_secret", cookie.Value)
			// Used once, whatever keyward answers.
			http.SetCookie(w, &http.Cookie{Name: federationCookie, Value: "", Path: "/",
				MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
			w.Header().Set("Cache-Control", "no-store")
		}
		r.URL.RawQuery = query.Encode()
		next.ServeHTTP(w, r)
	})
}

// forwardHeader decides which HTTP request headers become gRPC metadata, on top of what the
// gateway always sends: `authorization` (the bearer token), `x-forwarded-for` (the client's
// X-Forwarded-For, if any, with the peer the gateway saw appended last — keyward believes as many
// entries from the right as its `trusted_proxy_hops`) and `x-forwarded-host`. Those two are
// built by grpc-gateway from the HTTP request itself (runtime.AnnotateContext), not through this
// function.
func forwardHeader(key string) (string, bool) {
	lower := strings.ToLower(key)
	switch lower {
	// Trace context, so keyward's spans join the caller's trace.
	case "traceparent", "tracestate":
		return lower, true
	}
	// A client must not be able to write metadata that keyward, or a service it calls, reads as
	// set by the gateway or a trusted proxy: `Grpc-Metadata-X-Forwarded-For: 1.2.3.4` would
	// otherwise arrive as an `x-forwarded-for` ahead of the one the gateway builds. Checked on the
	// name both with and without the Grpc-Metadata- prefix.
	if gatewayOwned(strings.TrimPrefix(lower, strings.ToLower(runtime.MetadataHeaderPrefix))) {
		return "", false
	}
	// The default: Grpc-Metadata-* without the prefix, standard headers (User-Agent, ...) as
	// grpcgateway-<name>; keyward takes the client's user agent from grpcgateway-user-agent.
	return runtime.DefaultHeaderMatcher(key)
}

// gatewayOwned reports whether metadata named name (lower case) is the gateway's or a trusted
// proxy's to set, never a client's:
//   - x-forwarded-*, forwarded, x-real-ip: the client address and what proxies saw (keyward
//     rate-limits by and records the address, and takes the user agent from
//     x-forwarded-user-agent before grpcgateway-user-agent);
//   - grpcgateway-*: the names the gateway itself gives standard headers;
//   - x-keyward-*: identity headers that keyward's ext_authz sets for services behind Envoy;
//   - connection, keep-alive, proxy-connection, transfer-encoding, upgrade: connection-specific
//     headers HTTP/2 forbids, so keyward would reset the call and the client get a 5xx.
func gatewayOwned(name string) bool {
	switch name {
	case "forwarded", "x-real-ip",
		"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return true
	}
	for _, prefix := range []string{"x-forwarded-", "grpcgateway-", "x-keyward-"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// maxMetadataBytes bounds the metadata a call to keyward may carry, counted as HTTP/2 counts a
// header list (name + value + 32 per field). keyward's HTTP/2 server accepts lists up to 16 KiB;
// 1 KiB of that is left for what grpc-go adds itself (:path, content-type, te, grpc-timeout, ...).
const maxMetadataBytes = 15 * 1024

// checkCall refuses, before sending, a call keyward could not take because of what the client
// sent, which grpc-go would report as INTERNAL (a 500):
//   - a request message with no protobuf encoding: the gateway builds it from the client's JSON,
//     query and path, and some of what those allow cannot be encoded, like a null element in a
//     repeated message field (`"checks": [null]`) or invalid UTF-8 in a string from a
//     percent-encoded query or path. Answers 400 INVALID_ARGUMENT;
//   - metadata over maxMetadataBytes (a huge Cookie, say). Answers 431 HEADERS_TOO_LARGE.
func checkCall(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		size := 0
		for name, values := range md {
			for _, v := range values {
				if strings.HasSuffix(name, "-bin") {
					size += len(name) + base64.RawStdEncoding.EncodedLen(len(v)) + 32
				} else {
					size += len(name) + len(v) + 32
				}
			}
		}
		if size > maxMetadataBytes {
			return &headersTooLargeError{size: size}
		}
	}
	if m, ok := req.(proto.Message); ok {
		if _, err := proto.Marshal(m); err != nil {
			return status.Errorf(codes.InvalidArgument, "invalid request: %s", strings.TrimPrefix(err.Error(), "proto: "))
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// headersTooLargeError is checkCall's answer to oversized metadata; writeGRPCError turns it into
// 431 (no gRPC code maps there).
type headersTooLargeError struct{ size int }

func (e *headersTooLargeError) Error() string {
	return "request headers passed on to keyward are " + strconv.Itoa(e.size) +
		" bytes; the limit is " + strconv.Itoa(maxMetadataBytes)
}

func (e *headersTooLargeError) GRPCStatus() *status.Status {
	return status.New(codes.InvalidArgument, e.Error())
}

// callBudget is how long a call to keyward may take: a little less than the write timeout, so a
// slow keyward ends as a 504 DEADLINE_EXCEEDED answer rather than a connection closed with no
// answer at all (net/http drops what a handler writes after the write timeout).
func callBudget(writeTimeout time.Duration) time.Duration {
	return writeTimeout - writeTimeout/10
}

// limitRequest bounds what a request may cost before any route sees it: its body is read here,
// at most maxBody bytes (a larger one answers 413 REQUEST_TOO_LARGE, and a client that stops
// sending it 408 REQUEST_TIMEOUT once the read timeout passes), and its handling, calls to keyward
// included, gets a deadline of budget.
func limitRequest(next http.Handler, maxBody int64, budget time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		joinForwardedFor(r.Header)
		// Answers carry tokens, secrets and personal data: no cache may keep them.
		w.Header().Set("Cache-Control", "no-store")
		if r.ContentLength > maxBody {
			writeTooLarge(w, maxBody)
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			// Read whole now rather than by the route: grpc-gateway reads it whole anyway, and
			// here the error keeps its type instead of becoming a generic INVALID_ARGUMENT.
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
			if err != nil {
				var tooLarge *http.MaxBytesError
				var netErr net.Error
				switch {
				case errors.As(err, &tooLarge):
					writeTooLarge(w, maxBody)
				case errors.As(err, &netErr) && netErr.Timeout():
					w.Header().Set("Connection", "close")
					writeGatewayError(w, http.StatusRequestTimeout, codes.DeadlineExceeded, "REQUEST_TIMEOUT",
						"request body not received in time")
				default:
					w.Header().Set("Connection", "close")
					writeGatewayError(w, http.StatusBadRequest, codes.InvalidArgument, "INVALID_ARGUMENT",
						"cannot read request body")
				}
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		ctx, cancel := context.WithTimeout(r.Context(), budget)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// joinForwardedFor turns several X-Forwarded-For header lines into the one list they stand for
// (RFC 7230: repeated fields are one comma-separated field). grpc-gateway reads only the first
// line, and a proxy that adds a line of its own (HAProxy's `option forwardfor`) would otherwise
// leave the client's own line as the one keyward sees.
func joinForwardedFor(h http.Header) {
	if lines := h.Values("X-Forwarded-For"); len(lines) > 1 {
		h.Set("X-Forwarded-For", strings.Join(lines, ", "))
	}
}

func writeTooLarge(w http.ResponseWriter, maxBody int64) {
	// The rest of the body is not read, so the connection cannot carry another request.
	w.Header().Set("Connection", "close")
	writeGatewayError(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument, "REQUEST_TOO_LARGE",
		"request body is larger than "+strconv.FormatInt(maxBody, 10)+" bytes")
}

// httpStatus is keyward's mapping of gRPC codes to HTTP, written out rather than taken from the
// library so that it does not change under us between grpc-gateway versions.
func httpStatus(code codes.Code) int {
	switch code {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.FailedPrecondition:
		return http.StatusPreconditionFailed
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Canceled:
		return 499 // client closed request
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	default: // Unknown, Internal, DataLoss
		return http.StatusInternalServerError
	}
}

// codeNames are the canonical upper-case names of gRPC codes (google.rpc.Code), as clients of
// other Google-style REST APIs expect them in `status`.
var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

func codeName(code codes.Code) string {
	if name, ok := codeNames[code]; ok {
		return name
	}
	return "UNKNOWN"
}

// errorBody is what every failed call answers:
//
//	{"code":16,"status":"UNAUTHENTICATED","reason":"INVALID_CREDENTIALS","message":"...",
//	 "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",...}]}
//
// `reason` is keyward's stable ErrorInfo reason lifted to the top so clients can switch on it
// without digging through details; for errors made by the gateway itself (malformed JSON, keyward
// unreachable, unknown route) it is the status name. `field_violations` repeats the BadRequest
// detail and `retry_after_seconds` the RetryInfo detail (also sent as the Retry-After header).
type errorBody struct {
	Code              int32             `json:"code"`
	Status            string            `json:"status"`
	Reason            string            `json:"reason"`
	Message           string            `json:"message"`
	FieldViolations   []fieldViolation  `json:"field_violations,omitempty"`
	RetryAfterSeconds *int64            `json:"retry_after_seconds,omitempty"`
	Details           []json.RawMessage `json:"details"`
}

type fieldViolation struct {
	Field       string `json:"field"`
	Description string `json:"description"`
}

// writeGRPCError answers a call whose gRPC side failed (runtime.HTTPError).
func writeGRPCError(ctx context.Context, mux *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
	var tooLarge *headersTooLargeError
	if errors.As(err, &tooLarge) {
		writeGatewayError(w, http.StatusRequestHeaderFieldsTooLarge, codes.InvalidArgument, "HEADERS_TOO_LARGE", err.Error())
		return
	}
	s, ok := status.FromError(err)
	if !ok {
		s = status.New(codes.Unknown, err.Error())
	}
	body := errorBody{
		Code:    int32(s.Code()),
		Status:  codeName(s.Code()),
		Reason:  codeName(s.Code()),
		Message: s.Message(),
		Details: []json.RawMessage{},
	}
	for _, detail := range s.Proto().GetDetails() {
		if raw, err := marshaler.Marshal(detail); err == nil {
			body.Details = append(body.Details, raw)
		} else {
			log.Printf("keyward-gateway: cannot render error detail %s: %v", detail.GetTypeUrl(), err)
		}
	}
	for _, detail := range s.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			if d.GetReason() != "" {
				body.Reason = d.GetReason()
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				body.FieldViolations = append(body.FieldViolations, fieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.RetryInfo:
			if delay, err := ptypes.Duration(d.GetRetryDelay()); err == nil && delay >= 0 {
				// Whole seconds, rounded up: retrying a little late is fine, early is not.
				seconds := int64((delay + time.Second - 1) / time.Second)
				body.RetryAfterSeconds = &seconds
				w.Header().Set("Retry-After", strconv.FormatInt(seconds, 10))
			}
		}
	}
	// Response headers keyward sent before failing (as Grpc-Metadata-*), like the default handler.
	if md, ok := runtime.ServerMetadataFromContext(ctx); ok {
		for k, vs := range md.HeaderMD {
			for _, v := range vs {
				w.Header().Add(runtime.MetadataHeaderPrefix+k, v)
			}
		}
	}
	writeJSON(w, httpStatus(s.Code()), body)
}

// writeRoutingError answers requests that match no route (404) or a route with another method
// (405), in the same shape as every other error.
func writeRoutingError(w http.ResponseWriter, _ *http.Request, msg string, httpCode int) {
	code, reason := codes.Unknown, "UNKNOWN"
	switch httpCode {
	case http.StatusNotFound:
		code, reason = codes.NotFound, "ROUTE_NOT_FOUND"
	case http.StatusMethodNotAllowed:
		code, reason = codes.Unimplemented, "METHOD_NOT_ALLOWED"
	case http.StatusBadRequest:
		code, reason = codes.InvalidArgument, "INVALID_ARGUMENT"
	}
	writeGatewayError(w, httpCode, code, reason, strings.ToLower(msg))
}

// writeGatewayError answers an error the gateway makes itself, with no details.
func writeGatewayError(w http.ResponseWriter, httpCode int, code codes.Code, reason, msg string) {
	writeJSON(w, httpCode, errorBody{
		Code:    int32(code),
		Status:  codeName(code),
		Reason:  reason,
		Message: msg,
		Details: []json.RawMessage{},
	})
}

func writeJSON(w http.ResponseWriter, httpCode int, body interface{}) {
	buf, err := json.Marshal(body)
	if err != nil {
		log.Printf("keyward-gateway: cannot encode response: %v", err)
		buf = []byte(`{"code":13,"status":"INTERNAL","reason":"INTERNAL","message":"internal error","details":[]}`)
		httpCode = http.StatusInternalServerError
	}
	w.Header().Del("Trailer")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpCode)
	if _, err := w.Write(buf); err != nil {
		log.Printf("keyward-gateway: writing response: %v", err)
	}
}
