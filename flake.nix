{
  description = "deploykit: build, ship and roll back Docker services with zero dropped requests";

  # Rust comes from nixpkgs (rustc, cargo, clippy, rustfmt): the workspace needs no pinned
  # toolchain, so no rust-overlay.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";
    crane.url = "github:ipetkov/crane";
    flake-utils.url = "github:numtide/flake-utils";
  };

  # Use:
  #   nix build                      # all seven tools in ./result/bin
  #   nix build .#swap               # one tool
  #   nix run .#healthwait -- --url http://127.0.0.1:8000/up
  #   nix profile install github:deploykit/deploykit   # on a server: the tools on PATH
  #   nix develop                    # Rust, just, docker, the test services
  #   nix flake check                # clippy, rustfmt, the unit tests (no Docker daemon needed)
  # Offline, `scripts/check-flake` parses this file and evaluates its outputs against stubs.
  outputs =
    {
      self,
      nixpkgs,
      crane,
      flake-utils,
      ...
    }:
    flake-utils.lib.eachDefaultSystem (
      system:
      let
        pkgs = nixpkgs.legacyPackages.${system};
        inherit (pkgs) lib;
        craneLib = crane.mkLib pkgs;

        # Package name = binary name = crate directory under tools/.
        tools = [
          "img-build"
          "img-push"
          "snapshot"
          "healthwait"
          "swap"
          "restore"
          "notify"
        ];

        version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;

        # crane's filter keeps only Rust and Cargo files. The build and the unit tests need no
        # more, but tests/ (the testkit crate, a workspace member, and whatever fixtures its
        # tests read) and examples/app (the demo app, also a member) are kept whole so that
        # cargo finds every member and the source stays usable for the integration tests.
        src = lib.fileset.toSource {
          root = ./.;
          fileset = lib.fileset.unions [
            (craneLib.fileset.commonCargoSources ./.)
            ./tests
            ./examples/app
          ];
        };

        commonArgs = {
          inherit src version;
          pname = "deploykit";
          strictDeps = true;
          cargoExtraArgs = "--locked";
          # ring needs only the C compiler of stdenv; lettre and ureq use rustls, not OpenSSL.
        };

        # The whole workspace's dependencies, built once and shared by every package and check.
        cargoArtifacts = craneLib.buildDepsOnly commonArgs;

        tool =
          name:
          craneLib.buildPackage (
            commonArgs
            // {
              inherit cargoArtifacts;
              pname = name;
              cargoExtraArgs = "--locked -p ${name}";
              # The unit tests run once for the workspace (checks.deploykit-test); the
              # integration tests need a Docker Engine, which the Nix sandbox has not.
              doCheck = false;
              # The man page and shell completions come from the tool itself (`--generate`,
              # the same clap definition as `--help`); not when cross-compiling.
              nativeBuildInputs = [ pkgs.installShellFiles ];
              postInstall = lib.optionalString (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) ''
                $out/bin/${name} --generate man > ${name}.1
                installManPage ${name}.1
                installShellCompletion --cmd ${name} \
                  --bash <($out/bin/${name} --generate bash) \
                  --zsh <($out/bin/${name} --generate zsh) \
                  --fish <($out/bin/${name} --generate fish)
              '';
              meta.mainProgram = name;
            }
          );

        toolPackages = lib.genAttrs tools tool;
      in
      {
        packages = toolPackages // {
          default = pkgs.symlinkJoin {
            name = "deploykit-${version}";
            paths = lib.attrValues toolPackages;
          };
        };

        apps = lib.mapAttrs (name: drv: flake-utils.lib.mkApp { inherit drv name; }) toolPackages;

        checks = toolPackages // {
          deploykit-clippy = craneLib.cargoClippy (
            commonArgs
            // {
              inherit cargoArtifacts;
              cargoClippyExtraArgs = "--all-targets -- -D warnings";
            }
          );

          deploykit-fmt = craneLib.cargoFmt { inherit (commonArgs) src pname version; };

          # Unit tests only (`--lib`): everything under tools/*/tests runs the real binaries
          # against a Docker Engine and belongs to `scripts/test`, not to the sandbox.
          deploykit-test = craneLib.cargoTest (
            commonArgs
            // {
              inherit cargoArtifacts;
              cargoTestExtraArgs = "--workspace --lib";
            }
          );
        };

        # rustc, cargo, clippy and rustfmt come with craneLib.devShell; `checks` brings the
        # build inputs of every check. The rest is what the justfile, the tests, the benchmarks
        # and the demo call: the docker CLI (the tools themselves speak to the Engine API; the
        # Engine is the host's), a registry, nginx, an SMTP sink, load generators.
        devShells.default = craneLib.devShell {
          checks = self.checks.${system};
          packages = [
            pkgs.just
            pkgs.docker-client
            pkgs.docker-compose
            pkgs.nginx
            pkgs.docker-distribution
            (pkgs.python3.withPackages (ps: [ ps.aiosmtpd ]))
            pkgs.wrk
            pkgs.hey
            pkgs.jq
            pkgs.actionlint
          ];
        };
      }
    );
}
