//! Every WGSL shader in `shaders/` parses and validates with naga, so a broken shader fails
//! the tests even on a machine without any GPU. The folder is globbed: a new standalone
//! shader is covered without touching this file, and a file that only exists as part of a
//! composed module (the Gram kernels) must appear in one of the modules the crate builds.
//!
//! Modules are validated without naga's f16-in-f32 capability unless they unpack f16
//! input: the f32 kernels must run on devices that lack it.

use std::path::Path;

use naga::valid::{Capabilities, ValidationFlags, Validator};

fn validate(name: &str, source: &str, capabilities: Capabilities) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    assert!(!module.entry_points.is_empty(), "{name} has no entry point");
}

#[test]
fn every_shader_parses_and_validates() {
    let composed = divnet::gpu::gram::shader_modules();
    for (name, source, needs_f16) in composed {
        let caps = if needs_f16 {
            Capabilities::SHADER_FLOAT16_IN_FLOAT32
        } else {
            Capabilities::empty()
        };
        validate(name, source, caps);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("readable shader");
        if composed
            .iter()
            .any(|(_, module, _)| module.contains(&source))
        {
            checked += 1;
            continue;
        }
        validate(&path.display().to_string(), &source, Capabilities::empty());
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} shaders found in {}",
        dir.display()
    );
}

/// The capability check above means something: the f16 module needs it, the f32 one not.
#[test]
fn only_the_f16_gram_module_needs_f16_support() {
    for (name, source, needs_f16) in divnet::gpu::gram::shader_modules() {
        let module = naga::front::wgsl::parse_str(source).expect("parses");
        let without =
            Validator::new(ValidationFlags::all(), Capabilities::empty()).validate(&module);
        assert_eq!(without.is_err(), needs_f16, "{name}");
    }
}
