//! Attribute macros of the Weir guest SDK. Use them through their re-exports
//! in [`weir_guest`](https://docs.rs/weir-guest): `#[weir_guest::map]`,
//! `#[weir_guest::filter]`, `#[weir_guest::filter_map]`,
//! `#[weir_guest::flat_map]`, `#[weir_guest::map_partitions]`,
//! `#[weir_guest::reduce]`, `#[weir_guest::update_state]`,
//! `#[weir_guest::map_with_state]`, `#[weir_guest::transform_with]` and
//! `#[weir_guest::sink]`; their documentation lives there.
//!
//! Each macro keeps the function it is applied to and adds, in an anonymous
//! `const _: () = { ... }` block next to it, a unit struct implementing the
//! WIT `lifecycle` export and the `transform`, `reducer`, `keyed-state` or
//! `co-transform` export (a sink: the `sink` export, which has its own
//! `describe` and `init`) by calling the function once per record, group or
//! call (the loops live in the SDK), plus the export glue.

use proc_macro::TokenStream;
use proc_macro2::{Ident, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, GenericParam, ItemFn, LitStr, ReturnType, Type, WherePredicate};

// The operator a macro implements: the plugin kind shared by the host and
// the SDK (`#[reduce]` makes a `Reducer`).
use weir_abi::Kind;

/// What the macros need to know about each kind.
trait KindExt: Copy {
    /// The attribute, for error messages.
    fn attribute(self) -> &'static str;
    /// The expected parameters, for error messages.
    fn parameters(self) -> &'static str;
    /// The accepted numbers of parameters: the required ones, and the
    /// optional trailing `&GroupContext` of the stateful kinds.
    fn arity(self) -> (usize, usize);
    /// The `Kind` variant, as tokens.
    fn variant(self) -> TokenStream2;
}

impl KindExt for Kind {
    fn attribute(self) -> &'static str {
        match self {
            Kind::Map => "#[weir_guest::map]",
            Kind::Filter => "#[weir_guest::filter]",
            Kind::FilterMap => "#[weir_guest::filter_map]",
            Kind::FlatMap => "#[weir_guest::flat_map]",
            Kind::MapPartitions => "#[weir_guest::map_partitions]",
            Kind::Reducer => "#[weir_guest::reduce]",
            Kind::UpdateState => "#[weir_guest::update_state]",
            Kind::MapWithState => "#[weir_guest::map_with_state]",
            Kind::TransformWith => "#[weir_guest::transform_with]",
            Kind::Sink => "#[weir_guest::sink]",
        }
    }

    fn parameters(self) -> &'static str {
        match self {
            Kind::Map | Kind::Filter | Kind::FilterMap => "one parameter, `record: Record<'_>`",
            Kind::FlatMap => "two parameters, `record: Record<'_>, out: &mut Emitter`",
            Kind::MapPartitions => "two parameters, `input: &Batch<'_>, out: &mut Emitter`",
            Kind::Reducer => "one parameter, `values: Values<'_>`",
            Kind::UpdateState => {
                "four parameters, `key: &[u8], values: Values<'_>, state: Option<S>, \
                 out: &mut Emitter`, and optionally a fifth, `group: &GroupContext<'_>`"
            }
            Kind::MapWithState => {
                "three parameters, `event: StateEvent<'_>, state: &mut State<S>, \
                 out: &mut Emitter`, and optionally a fourth, `group: &GroupContext<'_>`"
            }
            Kind::TransformWith => {
                "three parameters, `left: &Batch<'_>, right: &Batch<'_>, out: &mut Emitter`"
            }
            Kind::Sink => "two parameters, `batch: &BatchInfo, records: &Batch<'_>`",
        }
    }

    fn arity(self) -> (usize, usize) {
        match self {
            Kind::Map | Kind::Filter | Kind::FilterMap | Kind::Reducer => (1, 1),
            Kind::FlatMap | Kind::MapPartitions | Kind::Sink => (2, 2),
            Kind::TransformWith => (3, 3),
            Kind::MapWithState => (3, 4),
            Kind::UpdateState => (4, 5),
        }
    }

    fn variant(self) -> TokenStream2 {
        match self {
            Kind::Map => quote!(Map),
            Kind::Filter => quote!(Filter),
            Kind::FilterMap => quote!(FilterMap),
            Kind::FlatMap => quote!(FlatMap),
            Kind::MapPartitions => quote!(MapPartitions),
            Kind::Reducer => quote!(Reducer),
            Kind::UpdateState => quote!(UpdateState),
            Kind::MapWithState => quote!(MapWithState),
            Kind::TransformWith => quote!(TransformWith),
            Kind::Sink => quote!(Sink),
        }
    }
}

/// The attribute's arguments: `init = path`, `name = "..."`, `version =
/// "..."`, and for the stateful kinds `state_version = N` and `migrate = path`.
#[derive(Default)]
struct Args {
    init: Option<syn::Path>,
    name: Option<LitStr>,
    version: Option<LitStr>,
    state_version: Option<syn::LitInt>,
    migrate: Option<syn::Path>,
}

impl Args {
    /// The plugin's name and version (the crate's unless given) and its
    /// `init` function (an `Option<InitFn>`), as tokens.
    fn described(&self) -> (TokenStream2, TokenStream2, TokenStream2) {
        let private = quote!(::weir_guest::__private);
        let name = match &self.name {
            Some(name) => quote!(#name),
            None => quote!(::core::env!("CARGO_PKG_NAME")),
        };
        let version = match &self.version {
            Some(version) => quote!(#version),
            None => quote!(::core::env!("CARGO_PKG_VERSION")),
        };
        let init = match &self.init {
            Some(path) => {
                let init = quote_spanned!(path.span()=> let init: #private::InitFn = #path;);
                quote!({ #init ::core::option::Option::Some(init) })
            }
            None => quote!(::core::option::Option::None),
        };
        (name, version, init)
    }
}

/// True for the kinds whose state the host keeps.
fn stateful(kind: Kind) -> bool {
    matches!(kind, Kind::UpdateState | Kind::MapWithState)
}

impl Args {
    fn parse(kind: Kind, tokens: TokenStream) -> syn::Result<Self> {
        let mut args = Args::default();
        let parser = syn::meta::parser(|meta| {
            let duplicate = || meta.error("duplicate argument");
            if meta.path.is_ident("init") {
                if args.init.is_some() {
                    return Err(duplicate());
                }
                args.init = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("name") {
                if args.name.is_some() {
                    return Err(duplicate());
                }
                args.name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("version") {
                if args.version.is_some() {
                    return Err(duplicate());
                }
                args.version = Some(meta.value()?.parse()?);
            } else if stateful(kind) && meta.path.is_ident("state_version") {
                if args.state_version.is_some() {
                    return Err(duplicate());
                }
                let value: syn::LitInt = meta.value()?.parse()?;
                if value.base10_parse::<u32>().map_or(true, |n| n == 0) {
                    return Err(syn::Error::new(
                        value.span(),
                        "`state_version` is a whole number from 1 (the default) to 4294967295",
                    ));
                }
                args.state_version = Some(value);
            } else if stateful(kind) && meta.path.is_ident("migrate") {
                if args.migrate.is_some() {
                    return Err(duplicate());
                }
                args.migrate = Some(meta.value()?.parse()?);
            } else {
                let name = meta
                    .path
                    .get_ident()
                    .map_or_else(|| "this".to_owned(), |i| format!("`{i}`"));
                let state = if stateful(kind) {
                    ", `state_version = N`, `migrate = path::to::fn`"
                } else {
                    ""
                };
                return Err(meta.error(format!(
                    "unknown argument {name} of {}: expected `init = path::to::fn`, \
                     `name = \"...\"`, `version = \"...\"`{state}",
                    kind.attribute()
                )));
            }
            Ok(())
        });
        syn::parse::Parser::parse(parser, tokens)?;
        if let (Some(migrate), None) = (&args.migrate, &args.state_version) {
            return Err(syn::Error::new(
                migrate.span(),
                "a plugin that migrates states says which state version it writes: \
                 add `state_version = N`",
            ));
        }
        Ok(args)
    }
}

/// Checks that `function` can be called by the generated batch loop.
fn check_signature(kind: Kind, function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    let attribute = kind.attribute();
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new(
            token.span(),
            format!("{attribute} does not support `async fn`: plugin functions are synchronous"),
        ));
    }
    if let Some(token) = &sig.unsafety {
        return Err(syn::Error::new(
            token.span(),
            format!("{attribute} does not support `unsafe fn`"),
        ));
    }
    for param in &sig.generics.params {
        if !matches!(param, GenericParam::Lifetime(_)) {
            return Err(syn::Error::new(
                param.span(),
                format!(
                    "{attribute} does not support generic functions (lifetime parameters only): \
                     the plugin exports one concrete function"
                ),
            ));
        }
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        for predicate in &where_clause.predicates {
            if !matches!(predicate, WherePredicate::Lifetime(_)) {
                return Err(syn::Error::new(
                    predicate.span(),
                    format!("{attribute} does not support generic functions"),
                ));
            }
        }
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new(
            variadic.span(),
            format!("{attribute} does not support variadic functions"),
        ));
    }
    for input in &sig.inputs {
        if let FnArg::Receiver(receiver) = input {
            return Err(syn::Error::new(
                receiver.span(),
                format!("{attribute} applies to a free function, not a method"),
            ));
        }
    }
    let count = sig.inputs.len();
    let (min, max) = kind.arity();
    if count < min || count > max {
        let span = if count > max {
            sig.inputs[max].span()
        } else {
            sig.paren_token.span.join()
        };
        return Err(syn::Error::new(
            span,
            format!(
                "{attribute} expects a function with {}, found {count} parameter{}",
                kind.parameters(),
                if count == 1 { "" } else { "s" }
            ),
        ));
    }
    if kind == Kind::UpdateState && matches!(returns(sig), Returns::Unit) {
        let span = match &sig.output {
            ReturnType::Default => sig.ident.span(),
            ReturnType::Type(_, ty) => ty.span(),
        };
        return Err(syn::Error::new(
            span,
            format!(
                "{attribute} functions return the key's new state: \
                 `Result<Option<S>, Error>` (`None` removes the key's state)"
            ),
        ));
    }
    Ok(())
}

/// What the user's function returns.
enum Returns {
    /// `Result<T, E>` with `E: Into<weir_guest::Error>`.
    Result,
    /// `T` directly.
    Plain,
    /// Nothing (`()`).
    Unit,
}

fn returns(sig: &syn::Signature) -> Returns {
    match &sig.output {
        ReturnType::Default => Returns::Unit,
        ReturnType::Type(_, ty) => match &**ty {
            Type::Tuple(tuple) if tuple.elems.is_empty() => Returns::Unit,
            Type::Path(path)
                if path
                    .path
                    .segments
                    .last()
                    .is_some_and(|segment| segment.ident == "Result") =>
            {
                Returns::Result
            }
            _ => Returns::Plain,
        },
    }
}

/// The state type `S` of a stateful function, read from its signature
/// (`state: Option<S>` or `state: &mut State<S>`); `None` when it is
/// spelled otherwise (a type alias), and then left to inference.
fn state_type(kind: Kind, sig: &syn::Signature) -> Option<Type> {
    let (position, wrapper) = match kind {
        Kind::UpdateState => (2, "Option"),
        Kind::MapWithState => (1, "State"),
        _ => return None,
    };
    let FnArg::Typed(typed) = sig.inputs.iter().nth(position)? else {
        return None;
    };
    let mut ty = &*typed.ty;
    if let Type::Reference(reference) = ty {
        ty = &reference.elem;
    }
    let Type::Path(path) = ty else { return None };
    let segment = path.path.segments.last()?;
    if segment.ident != wrapper {
        return None;
    }
    match &segment.arguments {
        syn::PathArguments::AngleBracketed(args) => match args.args.first()? {
            syn::GenericArgument::Type(state) => Some(state.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> syn::Result<TokenStream2> {
    if kind == Kind::Sink {
        return expand_sink(args, item);
    }
    let args = Args::parse(kind, args)?;
    let item2: TokenStream2 = item.into();
    let function: ItemFn = match syn::parse2::<syn::Item>(item2.clone())? {
        syn::Item::Fn(function) => function,
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!(
                    "{} applies to a function with {}",
                    kind.attribute(),
                    kind.parameters()
                ),
            ));
        }
    };
    check_signature(kind, &function)?;
    let sig = &function.sig;
    let ident = &sig.ident;
    let returns = returns(sig);
    let output_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };

    let private = quote!(::weir_guest::__private);
    let record = quote!(__weir_guest_record);
    let out = quote!(__weir_guest_out);
    let values = quote!(__weir_guest_values);
    let state = quote!(__weir_guest_state);
    let right = quote!(__weir_guest_right);
    // The optional trailing `&GroupContext` of the stateful kinds: passed
    // when the function declares it, else the loop's argument is ignored.
    let group = if sig.inputs.len() > kind.arity().0 {
        quote!(__weir_guest_group)
    } else {
        quote!(_)
    };

    // `call` is the user's call; `value` turns it into `Result<T, Error>`.
    // Each argument carries the span of its parameter's type, so that a
    // parameter of the wrong type is reported there.
    let names: &[&str] = match kind {
        Kind::FlatMap | Kind::MapPartitions => &["__weir_guest_record", "__weir_guest_out"],
        Kind::Map | Kind::Filter | Kind::FilterMap | Kind::Reducer => &["__weir_guest_record"],
        Kind::UpdateState => &[
            "__weir_guest_record",
            "__weir_guest_values",
            "__weir_guest_state",
            "__weir_guest_out",
            "__weir_guest_group",
        ],
        Kind::MapWithState => &[
            "__weir_guest_record",
            "__weir_guest_state",
            "__weir_guest_out",
            "__weir_guest_group",
        ],
        Kind::TransformWith => &["__weir_guest_record", "__weir_guest_right", "__weir_guest_out"],
        Kind::Sink => unreachable!("a sink expands in expand_sink"),
    };
    let arguments = sig.inputs.iter().zip(names).map(|(input, name)| {
        let span = match input {
            FnArg::Typed(typed) => typed.ty.span(),
            FnArg::Receiver(receiver) => receiver.span(),
        };
        Ident::new(name, span)
    });
    let call = quote!(#ident(#(#arguments),*));
    let value = match returns {
        Returns::Result => quote_spanned!(output_span=> #private::lift(#call)),
        Returns::Plain => quote_spanned!(output_span=> #private::ok(#call)),
        Returns::Unit => quote_spanned!(output_span=> { #call; #private::ok(()) }),
    };

    let (guest_impl, export) = match kind {
        Kind::Reducer => (
            quote! {
                impl #private::ReducerGuest for __WeirGuestPlugin {
                    fn reduce(
                        values: #private::wit::Values,
                        group_ends: ::std::vec::Vec<u32>,
                    ) -> ::core::result::Result<#private::wit::Values, #private::wit::ProcessError> {
                        #private::run_reduce(values, group_ends, |#record, #out| {
                            let value = #value?;
                            ::weir_guest::IntoValue::append_to(value, #out);
                            ::core::result::Result::Ok(())
                        })
                    }
                }
            },
            quote!(#private::reducer_bindings::__export_reducer!(__WeirGuestPlugin);),
        ),
        Kind::UpdateState | Kind::MapWithState => {
            let body = if kind == Kind::UpdateState {
                quote! {
                    #private::run_update_state(groups, |#record, #values, #state, #out, #group| #value)
                }
            } else {
                quote! {
                    #private::run_map_with_state(groups, |#record, #state, #out, #group| #value)
                }
            };
            (
                quote! {
                    impl #private::StateGuest for __WeirGuestPlugin {
                        fn update(
                            groups: #private::wit::KeyGroups,
                        ) -> ::core::result::Result<#private::wit::StateUpdate, #private::wit::ProcessError> {
                            #body
                        }
                    }
                },
                quote!(#private::state_bindings::__export_state!(__WeirGuestPlugin);),
            )
        }
        Kind::TransformWith => (
            quote! {
                impl #private::CoTransformGuest for __WeirGuestPlugin {
                    fn process_pair(
                        left: #private::wit::Batch,
                        right: #private::wit::Batch,
                    ) -> ::core::result::Result<#private::wit::Batch, #private::wit::ProcessError> {
                        #private::run_transform_with(left, right, |#record, #right, #out| #value)
                    }
                }
            },
            quote!(#private::co_transform_bindings::__export_co_transform!(__WeirGuestPlugin);),
        ),
        _ => {
            let body = match kind {
                Kind::Map => quote! {
                    #private::run_per_record(input, #private::Expect::OneToOne, |#record, #out| {
                        let value = #value?;
                        ::weir_guest::IntoOutput::emit_into(value, &#record, #out);
                        ::core::result::Result::Ok(())
                    })
                },
                Kind::FilterMap => quote! {
                    #private::run_per_record(input, #private::Expect::OneToOne, |#record, #out| {
                        if let ::core::option::Option::Some(value) = #value? {
                            ::weir_guest::IntoOutput::emit_into(value, &#record, #out);
                        }
                        ::core::result::Result::Ok(())
                    })
                },
                Kind::FlatMap => quote! {
                    #private::run_per_record(input, #private::Expect::Many, |#record, #out| #value)
                },
                Kind::Filter => quote! {
                    #private::run_filter(input, |#record| #value)
                },
                Kind::MapPartitions => quote! {
                    #private::run_map_partitions(input, |#record, #out| #value)
                },
                Kind::Reducer | Kind::UpdateState | Kind::MapWithState | Kind::TransformWith | Kind::Sink => {
                    unreachable!()
                }
            };
            (
                quote! {
                    impl #private::TransformGuest for __WeirGuestPlugin {
                        fn process(
                            input: #private::wit::Batch,
                        ) -> ::core::result::Result<
                            #private::wit::TransformOutput,
                            #private::wit::ProcessError,
                        > {
                            #body
                        }
                    }
                },
                quote!(#private::transform_bindings::__export_transform!(__WeirGuestPlugin);),
            )
        }
    };

    let (name, version, init) = args.described();
    let variant = kind.variant();
    let state_version = match &args.state_version {
        Some(version) => quote!(#version),
        None => quote!(1u32),
    };
    let migration = match &args.migrate {
        Some(path) => {
            let state = match state_type(kind, sig) {
                Some(state) => quote!(#state),
                None => quote!(_),
            };
            let migrate = quote_spanned!(path.span()=> #path);
            quote! {
                impl #private::StateMigrationGuest for __WeirGuestPlugin {
                    fn migrate_state(
                        from_version: u32,
                        states: #private::wit::Values,
                    ) -> ::core::result::Result<#private::wit::Values, #private::wit::ProcessError> {
                        #private::run_migrate_state::<_, #state, _>(from_version, states, #migrate)
                    }
                }

                #private::state_migration_bindings::__export_state_migration!(__WeirGuestPlugin);
            }
        }
        None => quote!(),
    };

    Ok(quote! {
        #function

        const _: () = {
            #[doc(hidden)]
            struct __WeirGuestPlugin;

            impl #private::LifecycleGuest for __WeirGuestPlugin {
                fn describe() -> #private::wit::PluginInfo {
                    #private::describe(#name, #version, #private::Kind::#variant, #state_version)
                }

                fn init(
                    config: #private::wit::Config,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    #private::init(config, #init)
                }
            }

            #guest_impl

            #private::lifecycle_bindings::__export_lifecycle!(__WeirGuestPlugin);
            #export
            #migration
        };
    })
}

/// `#[weir_guest::sink]`: the `sink` export (its own `describe` and
/// `init`, and `write` calling the function once per call).
fn expand_sink(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream2> {
    let kind = Kind::Sink;
    let args = Args::parse(kind, args)?;
    let function: ItemFn = match syn::parse2::<syn::Item>(item.into())? {
        syn::Item::Fn(function) => function,
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!(
                    "{} applies to a function with {}",
                    kind.attribute(),
                    kind.parameters()
                ),
            ));
        }
    };
    check_signature(kind, &function)?;
    let sig = &function.sig;
    let ident = &sig.ident;
    let output_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let spans: Vec<_> = sig
        .inputs
        .iter()
        .map(|input| match input {
            FnArg::Typed(typed) => typed.ty.span(),
            FnArg::Receiver(receiver) => receiver.span(),
        })
        .collect();
    let info = Ident::new("__weir_guest_info", spans[0]);
    let records = Ident::new("__weir_guest_records", spans[1]);
    let call = quote!(#ident(#info, #records));
    let private = quote!(::weir_guest::__private);
    let value = match returns(sig) {
        Returns::Result => quote_spanned!(output_span=> #private::lift_sink(#call)),
        Returns::Unit => quote_spanned!(output_span=> { #call; ::core::result::Result::Ok(()) }),
        Returns::Plain => {
            return Err(syn::Error::new(
                output_span,
                "#[weir_guest::sink] functions return `Result<(), SinkError>` (or nothing)",
            ));
        }
    };
    let (name, version, init) = args.described();
    Ok(quote! {
        #function

        const _: () = {
            #[doc(hidden)]
            struct __WeirGuestPlugin;

            impl #private::SinkGuest for __WeirGuestPlugin {
                fn describe() -> #private::SinkInfo {
                    #private::describe_sink(#name, #version)
                }

                fn init(
                    config: #private::wit::Config,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    #private::init(config, #init)
                }

                fn write(
                    info: #private::WitBatchInfo,
                    records: #private::wit::Batch,
                ) -> ::core::result::Result<(), #private::WriteError> {
                    #private::run_sink(info, records, |#info, #records| #value)
                }
            }

            #private::sink_bindings::__export_sink!(__WeirGuestPlugin);
        };
    })
}

fn entry(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(kind, args, item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            // Keep the item so that its own errors and uses still make sense.
            let mut tokens: TokenStream2 = error.to_compile_error();
            tokens.extend(TokenStream2::from(item));
            tokens.into()
        }
    }
}

/// Makes a function `fn(&BatchInfo, &Batch<'_>) -> Result<(), SinkError>`
/// the plugin's sink `write`. See `weir_guest::sink`.
#[proc_macro_attribute]
pub fn sink(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::Sink, args, item)
}

/// Makes a function `fn(Record<'_>) -> Result<impl IntoOutput, Error>` the
/// plugin's `map`. See `weir_guest::map`.
#[proc_macro_attribute]
pub fn map(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::Map, args, item)
}

/// Makes a function `fn(Record<'_>) -> Result<bool, Error>` the plugin's
/// `filter`. See `weir_guest::filter`.
#[proc_macro_attribute]
pub fn filter(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::Filter, args, item)
}

/// Makes a function `fn(Record<'_>) -> Result<Option<impl IntoOutput>, Error>`
/// the plugin's `filter-map`. See `weir_guest::filter_map`.
#[proc_macro_attribute]
pub fn filter_map(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::FilterMap, args, item)
}

/// Makes a function `fn(Record<'_>, &mut Emitter) -> Result<(), Error>` the
/// plugin's `flat-map`. See `weir_guest::flat_map`.
#[proc_macro_attribute]
pub fn flat_map(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::FlatMap, args, item)
}

/// Makes a function `fn(&Batch<'_>, &mut Emitter) -> Result<(), Error>` the
/// plugin's `map-partitions`. See `weir_guest::map_partitions`.
#[proc_macro_attribute]
pub fn map_partitions(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::MapPartitions, args, item)
}

/// Makes a function `fn(Values<'_>) -> Result<impl IntoValue, Error>` the
/// plugin's reducer. See `weir_guest::reduce`.
#[proc_macro_attribute]
pub fn reduce(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::Reducer, args, item)
}

/// Makes a function `fn(&[u8], Values<'_>, Option<S>, &mut Emitter) ->
/// Result<Option<S>, Error>` the plugin's `update-state` function. See
/// `weir_guest::update_state`.
#[proc_macro_attribute]
pub fn update_state(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::UpdateState, args, item)
}

/// Makes a function `fn(StateEvent<'_>, &mut State<S>, &mut Emitter) ->
/// Result<(), Error>` the plugin's `map-with-state` function. See
/// `weir_guest::map_with_state`.
#[proc_macro_attribute]
pub fn map_with_state(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::MapWithState, args, item)
}

/// Makes a function `fn(&Batch<'_>, &Batch<'_>, &mut Emitter) -> Result<(), Error>`
/// the plugin's `transform-with` function. See `weir_guest::transform_with`.
#[proc_macro_attribute]
pub fn transform_with(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::TransformWith, args, item)
}
