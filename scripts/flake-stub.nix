# Evaluates flake.nix's outputs offline, against stub inputs, for scripts/check-flake.
#
# Nothing here is fetched or built: `nixpkgs`, `crane` and `flake-utils` are replaced by small
# attrsets whose functions return fake derivations recording the arguments they were called
# with. What this proves: the flake evaluates (no typo in an attribute, a function or a path
# that exists), and its outputs have the shape we promise (a package and an app per tool, the
# checks, a devShell). What it cannot prove: that nixpkgs and crane really have these
# attributes, or that the derivations build; `nix flake check` does that where Nix can
# download.
#
#   nix-instantiate --store dummy:// --eval --strict --json --readonly-mode scripts/flake-stub.nix
let
  flake = ../flake.nix;
  inherit (builtins)
    attrNames
    attrValues
    filter
    foldl'
    hasAttr
    isAttrs
    isList
    isPath
    listToAttrs
    map
    mapAttrs
    pathExists
    ;

  root = toString ../.;
  # A path as the flake wrote it, relative to the repository ("." for the root).
  rel =
    p:
    let
      s = toString p;
      n = builtins.stringLength root;
    in
    if s == root then "." else builtins.substring (n + 1) (-1) s;

  genAttrs =
    names: f:
    listToAttrs (
      map (n: {
        name = n;
        value = f n;
      }) names
    );

  # flake-utils' defaultSystems.
  systems = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ];

  # A fake derivation: what `nix build` would see, plus the function and arguments that made it.
  drv = fn: name: args: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    stub = {
      inherit fn args;
    };
  };
  pkg = name: drv "nixpkgs" name { };

  # lib.fileset refuses paths that do not exist; so does the stub.
  existing =
    what: p:
    if pathExists p then p else throw "${what}: ${toString p} does not exist";
  fileset = {
    unions =
      members:
      {
        kind = "lib.fileset.unions";
        members = map (m: if isPath m then existing "lib.fileset.unions" m else m) members;
      };
    toSource =
      { root, fileset }:
      {
        kind = "lib.fileset.toSource";
        root = existing "lib.fileset.toSource" root;
        inherit fileset;
      };
  };

  mkPkgs =
    system:
    let
      pkgs = {
        inherit system;
        lib = {
          inherit genAttrs fileset;
          mapAttrs = mapAttrs;
          attrValues = attrValues;
          optionals = cond: xs: if cond then xs else [ ];
          optionalString = cond: s: if cond then s else "";
        };
        stdenv = {
          # Native builds only: the build platform runs what it builds.
          buildPlatform.canExecute = _: true;
          hostPlatform = { inherit system; };
          isDarwin = builtins.match ".*-darwin" system != null;
          isLinux = builtins.match ".*-linux" system != null;
        };
        symlinkJoin = args: drv "symlinkJoin" args.name args;
        mkShell = args: drv "mkShell" "nix-shell" args;
        writeShellScriptBin = name: text: drv "writeShellScriptBin" name { inherit text; };
        python3 = pkg "python3" // {
          withPackages = f: drv "python3.withPackages" "python3-env" { packages = f pkgs.python3Packages; };
        };
        python3Packages = {
          aiosmtpd = pkg "aiosmtpd";
        };
      }
      // genAttrs [
        "rustc"
        "cargo"
        "clippy"
        "rustfmt"
        "just"
        "docker-client"
        "docker-compose"
        "nginx"
        "docker-distribution"
        "wrk"
        "hey"
        "jq"
        "actionlint"
        "installShellFiles"
      ] pkg;
    in
    pkgs;

  nixpkgs = {
    legacyPackages = genAttrs systems mkPkgs;
  };

  crane = {
    mkLib =
      pkgs:
      let
        cargoDrv =
          fn: suffix: args:
          drv fn "${args.pname or "crate"}-${args.version or "0.0.0"}${suffix}" args;
      in
      {
        buildDepsOnly = cargoDrv "buildDepsOnly" "-deps";
        buildPackage = cargoDrv "buildPackage" "";
        cargoBuild = cargoDrv "cargoBuild" "";
        cargoClippy = cargoDrv "cargoClippy" "-clippy";
        cargoFmt = cargoDrv "cargoFmt" "-fmt";
        cargoTest = cargoDrv "cargoTest" "-test";
        cargoNextest = cargoDrv "cargoNextest" "-nextest";
        cargoDoc = cargoDrv "cargoDoc" "-doc";
        cleanCargoSource = p: {
          kind = "cleanCargoSource";
          path = existing "cleanCargoSource" p;
        };
        filterCargoSources = _path: _type: true;
        path = p: {
          kind = "path";
          path = existing "craneLib.path" p;
        };
        crateNameFromCargoToml = _: {
          pname = "crate";
          version = "0.0.0";
        };
        fileset = {
          commonCargoSources = p: {
            kind = "commonCargoSources";
            path = existing "craneLib.fileset.commonCargoSources" p;
          };
          cargoTomlAndLock = p: {
            kind = "cargoTomlAndLock";
            path = existing "craneLib.fileset.cargoTomlAndLock" p;
          };
          rust = p: {
            kind = "rust";
            path = existing "craneLib.fileset.rust" p;
          };
        };
        # As crane's own devShell: mkShell with the Rust toolchain and the checks' inputs.
        devShell =
          args:
          pkgs.mkShell (
            removeAttrs args [ "checks" ]
            // {
              inputsFrom = attrValues (args.checks or { });
              packages = [
                pkgs.rustc
                pkgs.cargo
                pkgs.clippy
                pkgs.rustfmt
              ]
              ++ (args.packages or [ ]);
            }
          );
      };
  };

  flake-utils = {
    lib = rec {
      defaultSystems = systems;
      # As flake-utils': `{ packages = { swap = ..; }; }` per system becomes
      # `{ packages.<system>.swap = ..; }`.
      eachSystem =
        ss: f:
        foldl' (
          acc: system:
          let
            out = f system;
          in
          acc // mapAttrs (k: v: (acc.${k} or { }) // { ${system} = v; }) out
        ) { } ss;
      eachDefaultSystem = eachSystem defaultSystems;
      mkApp =
        {
          drv,
          name ? drv.pname or drv.name,
          exePath ? drv.passthru.exePath or "/bin/${name}",
        }:
        {
          type = "app";
          program = "${drv}${exePath}";
        };
    };
  };

  spec = import flake;
  # `self` is the flake's own outputs, as Nix passes it (lazily: devShells read self.checks).
  self = outputs // {
    outPath = root;
  };
  outputs = spec.outputs {
    inherit
      self
      nixpkgs
      crane
      flake-utils
      ;
  };

  # What check-flake asserts on, as plain JSON.
  describeSrc =
    s:
    if isAttrs s && s ? kind then
      (removeAttrs s [
        "root"
        "path"
        "members"
        "fileset"
      ])
      // (if s ? root then { root = rel s.root; } else { })
      // (if s ? path then { path = rel s.path; } else { })
      // (if s ? members then { members = map describeSrc s.members; } else { })
      // (if s ? fileset then { fileset = describeSrc s.fileset; } else { })
    else if isPath s then
      rel s
    else
      s;
  describeDrv =
    d:
    {
      inherit (d) name;
      fn = d.stub.fn;
    }
    // (
      let
        a = d.stub.args;
        keep = filter (k: hasAttr k a) [
          "pname"
          "version"
          "cargoExtraArgs"
          "cargoClippyExtraArgs"
          "cargoTestExtraArgs"
          "cargoNextestExtraArgs"
          "doCheck"
          "strictDeps"
          "postInstall"
        ];
      in
      genAttrs keep (k: a.${k})
      // (if a ? cargoArtifacts then { cargoArtifacts = a.cargoArtifacts.stub.fn; } else { })
      // (if a ? src then { src = describeSrc a.src; } else { })
      // (if a ? paths then { paths = map (p: p.name) a.paths; } else { })
      // (if a ? meta then { inherit (a) meta; } else { })
    );
  describeShell =
    d:
    let
      a = d.stub.args;
    in
    {
      inputsFrom = map (c: c.name) a.inputsFrom;
      packages = map (
        p: if p.stub.fn == "python3.withPackages" then "python3+" + builtins.concatStringsSep "+" (map (q: q.name) p.stub.args.packages) else p.name
      ) a.packages;
    };
in
{
  description = spec.description;
  inputs = mapAttrs (_: i: i.url or null) spec.inputs;
  systems = attrNames outputs.packages;
  perSystem = genAttrs systems (system: {
    packages = mapAttrs (_: describeDrv) outputs.packages.${system};
    apps = outputs.apps.${system};
    checks = mapAttrs (_: describeDrv) outputs.checks.${system};
    devShells = mapAttrs (_: describeShell) outputs.devShells.${system};
  });
}
