//! Certificate templates (`[[template]]` in the authority's config): parsed,
//! checked against RFC 5280, and rendered for one device.
#![no_main]
use iotpki_core::name::DeviceSerial;
use iotpki_core::template::{parse_specs, Context, TemplateSpec};
use libfuzzer_sys::fuzz_target;

#[derive(serde::Deserialize)]
struct File {
    #[serde(default)]
    template: Vec<TemplateSpec>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = toml::from_str::<File>(text) else { return };
    let Ok(templates) = parse_specs(file.template) else { return };
    let serial = DeviceSerial::parse("SN-1").expect("a valid serial");
    let subject = Default::default();
    let ctx = Context { organization: "Acme", serial: &serial, batch: Some("B"), product: Some("p"), csr_subject: &subject };
    for t in &templates {
        let _ = t.render(&ctx);
    }
});
