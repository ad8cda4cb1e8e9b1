//! Compiles `proto/keyward/v1/*.proto` into tonic servers and clients, and writes the
//! file descriptor set that the reflection service serves (so grpcurl needs no .proto files).
//! `protoc` comes from the `protoc-bin-vendored` crate unless `PROTOC` names one; the Google API
//! protos the files import (`google/api/field_behavior.proto`) are vendored in `proto/vendor/`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/keyward/v1/common.proto",
        "proto/keyward/v1/auth_service.proto",
        "proto/keyward/v1/otp_service.proto",
        "proto/keyward/v1/org_service.proto",
        "proto/keyward/v1/user_service.proto",
        "proto/keyward/v1/mfa_service.proto",
        "proto/keyward/v1/permission_service.proto",
        "proto/keyward/v1/service_account_service.proto",
        "proto/keyward/v1/federation_service.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("keyward_descriptor.bin"))
        // RPCs that later work implements answer UNIMPLEMENTED until then.
        .generate_default_stubs(true)
        // Decode failures (bad UTF-8, oversized messages) become INVALID_ARGUMENT with field
        // violations instead of tonic's INTERNAL.
        .codec_path("crate::grpc::codec::KeywardCodec")
        .compile_protos(&protos, &["proto", "proto/vendor"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
