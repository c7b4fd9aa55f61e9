//! The operator (`setpoint operator`): turns `SetpointJob` and `SetpointService` objects into
//! ResourceClaimTemplates whose parameters carry the tenant, tenant pods that hold a claim
//! each, and for a service a Kubernetes Service that routes to the nodes serving it; then
//! writes each tenant's measured state, read from its node's daemon, back to the object's
//! status.
//!
//! - [`crd`]: the custom resources and their CustomResourceDefinitions.
//! - [`render`]: what is created for each, as pure functions; [`endpoints`]: the Service's
//!   EndpointSlices, from the pods and what their nodes say.
//! - [`reconcile`]: the controllers, applying with server-side apply.
//! - [`status`]: the status writer, every few seconds; [`node_read`]: reading the nodes.

pub mod crd;
pub mod endpoints;
pub mod names;
pub mod node_read;
pub mod observe;
pub mod reconcile;
pub mod render;
pub mod settings;
pub mod status;
pub mod yaml;

pub use reconcile::{Context, OperatorError, run};
pub use settings::{DeviceKind, Settings};
