//! Trims the kernel package's ~4,000 modules to the ones the profile names
//! plus what they need, and writes the index files `modprobe` reads.
//!
//! Dependencies come from each module's `.modinfo` ELF section (`depends=`
//! gives the same closure as depmod's symbol resolution), read only for the
//! modules reached from the requested names. `softdep=` `pre:` modules are
//! included too, since the module works badly or not at all without them
//! (ext4 wants `crc32c`). The output follows depmod: `modules.dep` lists
//! each module's dependencies ordered so that loading them right to left
//! works, and lines, aliases and soft dependencies follow `modules.order`.
//!
//! Only the text indexes are written: busybox `modprobe` reads them; kmod's
//! `modprobe` and udev's module loading need depmod's `.bin` files, which
//! are not produced, so the init loads [`ModuleSelection::load_order`]
//! explicitly, and drivers kept for on-demand loading are loaded by a udev
//! rule that hands the device's modalias to BusyBox `modprobe`.
//!
//! A requested entry with a `/` is a glob over module paths
//! (`kernel/drivers/net/ethernet/**`), expanded to every module it matches.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use object::{Object, ObjectSection};
use thiserror::Error;

use crate::deb_archive::EntryKind;
use crate::rootfs::{RootfsError, RootfsTree, wildcard_matches};

/// Where the kernel package's modules live once merged-/usr is applied.
pub const MODULES_ROOT: &str = "usr/lib/modules";

/// Errors while selecting modules; each names the module or file.
#[derive(Debug, Error)]
pub enum KernelModulesError {
    /// The tree holds no `usr/lib/modules/<version>` directory.
    #[error("no kernel modules directory under {MODULES_ROOT}")]
    NoKernel,
    /// More than one kernel version is installed.
    #[error("several kernels under {MODULES_ROOT}: {}", versions.join(", "))]
    SeveralKernels {
        /// The versions found.
        versions: Vec<String>,
    },
    /// The kernel image for the modules' version is missing.
    #[error("kernel {version}: {path} is missing or not a file")]
    NoVmlinuz {
        /// The kernel version.
        version: String,
        /// The path looked for.
        path: String,
    },
    /// A requested module does not exist in this kernel.
    #[error(
        "kernel {version}: no module named {name}{}",
        close_matches_text(close)
    )]
    UnknownModule {
        /// The kernel version.
        version: String,
        /// The requested name.
        name: String,
        /// Similar module names, best first.
        close: Vec<String>,
    },
    /// A folder pattern of `kernel.modules` matches no module of this kernel.
    #[error("kernel {version}: pattern {pattern} matches no module")]
    NoMatch {
        /// The kernel version.
        version: String,
        /// The pattern as written.
        pattern: String,
    },
    /// A folder pattern is not a valid glob.
    #[error("pattern {pattern}: {reason}")]
    BadPattern {
        /// The pattern as written.
        pattern: String,
        /// What the glob parser said.
        reason: String,
    },
    /// A module's `depends=` names a module that is not there.
    #[error("{path}: depends on {dependency}, which this kernel does not ship")]
    MissingDependency {
        /// The depending module's path in the tree.
        path: String,
        /// The missing module's name.
        dependency: String,
    },
    /// The module is stored compressed, which this tool does not read.
    #[error("{path}: compressed modules are not supported")]
    Compressed {
        /// The module's path in the tree.
        path: String,
    },
    /// The module's ELF or its `.modinfo` section is unreadable.
    #[error("{path}: cannot read .modinfo: {reason}")]
    BadModinfo {
        /// The module's path in the tree.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Modules depend on each other in a circle, which depmod refuses too.
    #[error("kernel {version}: dependency cycle among {}", modules.join(", "))]
    Cycle {
        /// The kernel version.
        version: String,
        /// The modules left in the cycle.
        modules: Vec<String>,
    },
    /// Changing the tree failed.
    #[error(transparent)]
    Tree(#[from] RootfsError),
}

fn close_matches_text(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", close.join(", "))
    }
}

/// What [`select_modules`] kept and where the kernel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSelection {
    /// The kernel release (`6.1.0-50-amd64`).
    pub kernel_version: String,
    /// The kernel image in the tree (`boot/vmlinuz-<version>`).
    pub vmlinuz: String,
    /// The modules directory in the tree (`usr/lib/modules/<version>`).
    pub modules_dir: String,
    /// Module names (with `_`) in an order that loads each after everything
    /// it depends on, including `softdep` `pre:` modules.
    pub load_order: Vec<String>,
    /// Each kept module's path relative to [`Self::modules_dir`].
    pub module_paths: BTreeMap<String, String>,
    /// Requested names that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// `softdep` `pre:` names that match no module, alias or built-in,
    /// as `module: name`.
    pub unresolved_softdeps: Vec<String>,
    /// How many `.ko` files were removed from the tree.
    pub removed_modules: usize,
    /// Their total size in bytes.
    pub removed_bytes: u64,
}

/// The `.modinfo` fields this module uses.
#[derive(Debug, Default, Clone)]
struct ModInfo {
    depends: Vec<String>,
    softdep_pre: Vec<String>,
    /// Raw `softdep=` values, for `modules.softdep`.
    softdeps: Vec<String>,
    aliases: Vec<String>,
}

/// Module names compare with `-` and `_` as the same character, as in kmod.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Keeps the modules named in `wanted` and `on_demand` (plus their
/// `depends=` and softdep `pre:` closure) in the single kernel found in
/// `tree`, removes every other `.ko`, and writes `modules.dep`,
/// `modules.alias`, `modules.softdep` and a filtered `modules.order` beside
/// them. Only `wanted` (and what it needs) is in the load order:
/// `on_demand` modules are drivers loaded by their device's modalias.
pub fn select_modules<S: AsRef<str>>(
    tree: &mut RootfsTree,
    wanted: &[S],
    on_demand: &[S],
) -> Result<ModuleSelection, KernelModulesError> {
    let version = find_kernel(tree)?;
    let modules_dir = format!("{MODULES_ROOT}/{version}");
    let vmlinuz = format!("boot/vmlinuz-{version}");
    if !matches!(
        tree.get(&vmlinuz).map(|n| &n.kind),
        Some(EntryKind::File(_))
    ) {
        return Err(KernelModulesError::NoVmlinuz {
            version,
            path: vmlinuz,
        });
    }
    let index = ModuleIndex::scan(tree, &modules_dir);
    let (requested, builtin) = requested_modules(&index, wanted, &version)?;
    let (drivers, _) = requested_modules(&index, on_demand, &version)?;
    let roots: Vec<String> = requested.iter().chain(&drivers).cloned().collect();
    let mut closure = Closure::walk(&index, tree, &roots)?;

    let selected = index.ordered(closure.infos.keys());
    let deps_text = modules_dep(&version, &index, &selected, &closure.infos)?;
    let load_order = load_order(
        &requested,
        &selected,
        &closure.infos,
        &index,
        tree,
        &mut closure.all_aliases,
    )?;
    let (removed_modules, removed_bytes) = remove_unselected(tree, &index, &selected)?;
    write_indexes(tree, &index, &selected, &closure.infos, deps_text)?;

    Ok(ModuleSelection {
        kernel_version: version,
        vmlinuz,
        module_paths: selected
            .iter()
            .map(|n| (n.clone(), index.paths[n].clone()))
            .collect(),
        modules_dir,
        load_order,
        builtin,
        unresolved_softdeps: closure.unresolved_softdeps,
        removed_modules,
        removed_bytes,
    })
}

/// The requested names (normalized) that are modules, in the profile's
/// order, and those that are built in; an unknown name is an error. An entry
/// with a `/` is a glob over paths in the modules directory
/// (`kernel/drivers/net/ethernet/**`): every module it matches, in
/// `modules.order`.
fn requested_modules<S: AsRef<str>>(
    index: &ModuleIndex,
    wanted: &[S],
    version: &str,
) -> Result<(Vec<String>, Vec<String>), KernelModulesError> {
    let mut modules = Vec::new();
    let mut builtin = Vec::new();
    for entry in wanted {
        let entry = entry.as_ref().trim();
        if entry.contains('/') {
            modules.extend(index.matching(entry, version)?);
            continue;
        }
        let name = normalize_name(entry);
        if index.paths.contains_key(&name) || index.compressed.contains_key(&name) {
            modules.push(name);
        } else if index.builtin.contains(&name) {
            builtin.push(name);
        } else {
            return Err(KernelModulesError::UnknownModule {
                close: index.close_matches(&name),
                version: version.to_string(),
                name,
            });
        }
    }
    Ok((modules, builtin))
}

/// The `depends=` and softdep `pre:` closure of the requested modules.
struct Closure {
    /// `.modinfo` of every module in the closure.
    infos: HashMap<String, ModInfo>,
    /// `softdep` `pre:` names that resolved to nothing, as `module: name`.
    unresolved_softdeps: Vec<String>,
    /// (alias, module) of every module, read once when first needed.
    all_aliases: Option<Vec<(String, String)>>,
}

impl Closure {
    /// Walks from `requested`, reading `.modinfo` only for what is needed.
    fn walk(
        index: &ModuleIndex,
        tree: &RootfsTree,
        requested: &[String],
    ) -> Result<Self, KernelModulesError> {
        let mut closure = Self {
            infos: HashMap::new(),
            unresolved_softdeps: Vec::new(),
            all_aliases: None,
        };
        let mut pending: Vec<String> = requested.iter().rev().cloned().collect();
        while let Some(name) = pending.pop() {
            if closure.infos.contains_key(&name) {
                continue;
            }
            let info = index.modinfo(tree, &name)?;
            for dependency in &info.depends {
                if index.paths.contains_key(dependency) || index.compressed.contains_key(dependency)
                {
                    pending.push(dependency.clone());
                } else if !index.builtin.contains(dependency) {
                    return Err(KernelModulesError::MissingDependency {
                        path: index.full_path(&name),
                        dependency: dependency.clone(),
                    });
                }
            }
            for soft in &info.softdep_pre {
                match index.resolve_soft(tree, soft, &mut closure.all_aliases)? {
                    Soft::Modules(names) => pending.extend(names),
                    Soft::Builtin => {}
                    Soft::Unresolved => closure.unresolved_softdeps.push(format!("{name}: {soft}")),
                }
            }
            closure.infos.insert(name, info);
        }
        Ok(closure)
    }
}

/// Removes every `.ko` not in `selected`, then the directories that became
/// empty; returns how many files and bytes went.
fn remove_unselected(
    tree: &mut RootfsTree,
    index: &ModuleIndex,
    selected: &[String],
) -> Result<(usize, u64), KernelModulesError> {
    let modules_dir = &index.modules_dir;
    let keep: HashSet<&str> = selected.iter().map(String::as_str).collect();
    let mut removed_modules = 0;
    let mut removed_bytes = 0;
    let doomed: Vec<String> = index
        .paths
        .iter()
        .chain(index.compressed.iter())
        .filter(|(name, _)| !keep.contains(name.as_str()))
        .map(|(_, relative)| format!("{modules_dir}/{relative}"))
        .collect();
    for path in doomed {
        if let Some(EntryKind::File(contents)) = tree.get(&path).map(|n| &n.kind) {
            removed_bytes += contents.len() as u64;
        }
        removed_modules += tree.remove(&path)?;
    }
    prune_empty_dirs(tree, &format!("{modules_dir}/kernel"))?;
    Ok((removed_modules, removed_bytes))
}

/// Writes `modules.dep` (given), `modules.alias`, `modules.softdep` and the
/// filtered `modules.order` into the modules directory.
fn write_indexes(
    tree: &mut RootfsTree,
    index: &ModuleIndex,
    selected: &[String],
    infos: &HashMap<String, ModInfo>,
    deps_text: String,
) -> Result<(), KernelModulesError> {
    let mut aliases = String::from("# Aliases extracted from modules themselves.\n");
    let mut softdeps = String::from("# Soft dependencies extracted from modules themselves.\n");
    for name in selected {
        let info = &infos[name];
        for alias in &info.aliases {
            aliases.push_str(&format!("alias {alias} {name}\n"));
        }
        for soft in &info.softdeps {
            softdeps.push_str(&format!("softdep {name} {soft}\n"));
        }
    }
    let kept_paths: HashSet<&str> = selected.iter().map(|n| index.paths[n].as_str()).collect();
    let order: String = index
        .order
        .iter()
        .filter(|line| kept_paths.contains(line.as_str()))
        .map(|line| format!("{line}\n"))
        .collect();
    for (file, text) in [
        ("modules.dep", deps_text),
        ("modules.alias", aliases),
        ("modules.softdep", softdeps),
        ("modules.order", order),
    ] {
        tree.add_file(
            &format!("{}/{file}", index.modules_dir),
            text.into_bytes(),
            0o644,
            0,
            0,
        )?;
    }
    Ok(())
}

/// The one kernel version with a modules directory.
fn find_kernel(tree: &RootfsTree) -> Result<String, KernelModulesError> {
    let prefix = format!("{MODULES_ROOT}/");
    let versions: Vec<String> = tree
        .iter_under(MODULES_ROOT)
        .filter(|(_, node)| node.kind == EntryKind::Dir)
        .filter_map(|(path, _)| path.strip_prefix(&prefix))
        .filter(|rest| !rest.contains('/'))
        .map(str::to_string)
        .collect();
    match versions.as_slice() {
        [] => Err(KernelModulesError::NoKernel),
        [one] => Ok(one.clone()),
        _ => Err(KernelModulesError::SeveralKernels { versions }),
    }
}

/// How a softdep name resolved.
enum Soft {
    Modules(Vec<String>),
    Builtin,
    Unresolved,
}

/// What the kernel package ships, from paths and the small text files only.
struct ModuleIndex {
    modules_dir: String,
    /// Module name → path relative to the modules directory.
    paths: BTreeMap<String, String>,
    /// Compressed modules, refused when needed.
    compressed: BTreeMap<String, String>,
    /// Built-in module names.
    builtin: HashSet<String>,
    /// Aliases of built-in modules (normalized) from `modules.builtin.modinfo`.
    builtin_aliases: Vec<String>,
    /// Lines of `modules.order`.
    order: Vec<String>,
}

impl ModuleIndex {
    fn scan(tree: &RootfsTree, modules_dir: &str) -> Self {
        let mut paths = BTreeMap::new();
        let mut compressed = BTreeMap::new();
        let strip = format!("{modules_dir}/");
        for (path, node) in tree.iter_under(&format!("{modules_dir}/kernel")) {
            if node.kind == EntryKind::Dir {
                continue;
            }
            let relative = &path[strip.len()..];
            let file_name = relative.rsplit('/').next().unwrap_or(relative);
            if let Some(stem) = file_name.strip_suffix(".ko") {
                paths
                    .entry(normalize_name(stem))
                    .or_insert_with(|| relative.to_string());
            } else if let Some((stem, _)) = file_name.split_once(".ko.") {
                compressed
                    .entry(normalize_name(stem))
                    .or_insert_with(|| relative.to_string());
            }
        }
        let text = |file: &str| -> String {
            match tree.get(&format!("{modules_dir}/{file}")).map(|n| &n.kind) {
                Some(EntryKind::File(contents)) => String::from_utf8_lossy(contents).into_owned(),
                _ => String::new(),
            }
        };
        let builtin = text("modules.builtin")
            .lines()
            .filter_map(|line| line.rsplit('/').next())
            .filter_map(|name| name.strip_suffix(".ko"))
            .map(normalize_name)
            .collect();
        let builtin_aliases = text("modules.builtin.modinfo")
            .split('\0')
            .filter_map(|field| field.split_once(".alias="))
            .map(|(_, alias)| normalize_name(alias))
            .collect();
        let order = text("modules.order").lines().map(str::to_string).collect();
        Self {
            modules_dir: modules_dir.to_string(),
            paths,
            compressed,
            builtin,
            builtin_aliases,
            order,
        }
    }

    fn full_path(&self, name: &str) -> String {
        let relative = self
            .paths
            .get(name)
            .or_else(|| self.compressed.get(name))
            .map_or(name, String::as_str);
        format!("{}/{relative}", self.modules_dir)
    }

    /// Parses one module's `.modinfo`.
    fn modinfo(&self, tree: &RootfsTree, name: &str) -> Result<ModInfo, KernelModulesError> {
        let path = self.full_path(name);
        if !self.paths.contains_key(name) {
            return Err(KernelModulesError::Compressed { path });
        }
        let bad = |reason: String| KernelModulesError::BadModinfo {
            path: path.clone(),
            reason,
        };
        let Some(EntryKind::File(contents)) = tree.get(&path).map(|n| &n.kind) else {
            return Err(bad("not a regular file".to_string()));
        };
        let elf = object::File::parse(&**contents).map_err(|e| bad(e.to_string()))?;
        let section = elf
            .section_by_name(".modinfo")
            .ok_or_else(|| bad("no .modinfo section".to_string()))?;
        let data = section.data().map_err(|e| bad(e.to_string()))?;
        let mut info = ModInfo::default();
        for field in data.split(|&b| b == 0) {
            let Ok(field) = std::str::from_utf8(field) else {
                continue;
            };
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "depends" => {
                    for dependency in value.split(',').filter(|d| !d.is_empty()) {
                        let dependency = normalize_name(dependency);
                        if !info.depends.contains(&dependency) {
                            info.depends.push(dependency);
                        }
                    }
                }
                "softdep" => {
                    info.softdeps.push(value.to_string());
                    let mut pre = false;
                    for token in value.split_whitespace() {
                        match token {
                            "pre:" => pre = true,
                            "post:" => pre = false,
                            name if pre => info.softdep_pre.push(name.to_string()),
                            _ => {}
                        }
                    }
                }
                "alias" => info.aliases.push(value.to_string()),
                _ => {}
            }
        }
        Ok(info)
    }

    /// Resolves a softdep name like modprobe would: a module, a built-in,
    /// or an alias; the aliases of all modules are read only the first time
    /// a name is neither.
    fn resolve_soft(
        &self,
        tree: &RootfsTree,
        name: &str,
        all_aliases: &mut Option<Vec<(String, String)>>,
    ) -> Result<Soft, KernelModulesError> {
        let normalized = normalize_name(name);
        if self.paths.contains_key(&normalized) {
            return Ok(Soft::Modules(vec![normalized]));
        }
        if self.builtin.contains(&normalized)
            || self
                .builtin_aliases
                .iter()
                .any(|a| wildcard_matches(a, &normalized))
        {
            return Ok(Soft::Builtin);
        }
        if all_aliases.is_none() {
            let mut list = Vec::new();
            for module in self.paths.keys() {
                for alias in self.modinfo(tree, module)?.aliases {
                    list.push((normalize_name(&alias), module.clone()));
                }
            }
            *all_aliases = Some(list);
        }
        let modules: BTreeSet<String> = all_aliases
            .iter()
            .flatten()
            .filter(|(alias, _)| wildcard_matches(alias, &normalized))
            .map(|(_, module)| module.clone())
            .collect();
        Ok(if modules.is_empty() {
            Soft::Unresolved
        } else {
            Soft::Modules(modules.into_iter().collect())
        })
    }

    /// Module names in depmod's order: as in `modules.order`, then the rest
    /// by path.
    fn ordered<'a>(&self, names: impl Iterator<Item = &'a String>) -> Vec<String> {
        let position: HashMap<&str, usize> = self
            .order
            .iter()
            .enumerate()
            .map(|(i, line)| (line.as_str(), i))
            .collect();
        let mut names: Vec<&String> = names.collect();
        names.sort_by_key(|name| {
            let path = self.paths[*name].as_str();
            (position.get(path).copied().unwrap_or(usize::MAX), path)
        });
        names.into_iter().cloned().collect()
    }

    /// The modules whose path matches the glob `pattern` (`*` within a
    /// name, `**` across folders), in depmod's order; none is an error.
    fn matching(&self, pattern: &str, version: &str) -> Result<Vec<String>, KernelModulesError> {
        let matcher = globset::GlobBuilder::new(pattern.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|error| KernelModulesError::BadPattern {
                pattern: pattern.to_string(),
                reason: error.kind().to_string(),
            })?
            .compile_matcher();
        let names: Vec<&String> = self
            .paths
            .iter()
            .chain(self.compressed.iter())
            .filter(|(_, path)| matcher.is_match(path.as_str()))
            .map(|(name, _)| name)
            .collect();
        if names.is_empty() {
            return Err(KernelModulesError::NoMatch {
                version: version.to_string(),
                pattern: pattern.to_string(),
            });
        }
        let (plain, compressed): (Vec<&String>, Vec<&String>) = names
            .into_iter()
            .partition(|name| self.paths.contains_key(*name));
        let mut ordered = self.ordered(plain.into_iter());
        ordered.extend(compressed.into_iter().cloned());
        Ok(ordered)
    }

    /// Up to five module names resembling `name`, best first.
    fn close_matches(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(usize, &String)> = self
            .paths
            .keys()
            .filter_map(|candidate| {
                let distance = edit_distance(name, candidate);
                let related = candidate.contains(name) || name.contains(candidate.as_str());
                (distance <= 2.max(name.len() / 4) || (related && name.len() >= 3))
                    .then_some((distance, candidate))
            })
            .collect();
        scored.sort();
        scored.into_iter().take(5).map(|(_, n)| n.clone()).collect()
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// `modules.dep` as depmod writes it: a topological order of the selected
/// modules (Kahn's algorithm with a stack, users before the modules they
/// use) decides the order of each module's full dependency list.
fn modules_dep(
    version: &str,
    index: &ModuleIndex,
    selected: &[String],
    infos: &HashMap<String, ModInfo>,
) -> Result<String, KernelModulesError> {
    let position: HashMap<&str, usize> = selected
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    // Direct dependencies that are modules (built-ins have nothing to load).
    let direct: Vec<Vec<usize>> = selected
        .iter()
        .map(|name| {
            infos[name]
                .depends
                .iter()
                .filter_map(|d| position.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let mut users = vec![0usize; selected.len()];
    for deps in &direct {
        for &d in deps {
            users[d] += 1;
        }
    }
    let mut roots: Vec<usize> = (0..selected.len()).filter(|&i| users[i] == 0).collect();
    let mut sort_index = vec![usize::MAX; selected.len()];
    let mut sorted = 0;
    while let Some(source) = roots.pop() {
        sort_index[source] = sorted;
        sorted += 1;
        for &d in &direct[source] {
            users[d] -= 1;
            if users[d] == 0 {
                roots.push(d);
            }
        }
    }
    if sorted < selected.len() {
        return Err(KernelModulesError::Cycle {
            version: version.to_string(),
            modules: (0..selected.len())
                .filter(|&i| sort_index[i] == usize::MAX)
                .map(|i| selected[i].clone())
                .collect(),
        });
    }
    let mut text = String::new();
    for (i, name) in selected.iter().enumerate() {
        text.push_str(&index.paths[name]);
        text.push(':');
        let mut all = BTreeSet::new();
        let mut stack = direct[i].clone();
        while let Some(d) = stack.pop() {
            if all.insert((sort_index[d], d)) {
                stack.extend(&direct[d]);
            }
        }
        for (_, d) in all {
            text.push(' ');
            text.push_str(&index.paths[&selected[d]]);
        }
        text.push('\n');
    }
    Ok(text)
}

/// Depth-first from the requested modules, in the order given: softdep
/// `pre:` modules, then dependencies, then the module.
fn load_order(
    requested: &[String],
    selected: &[String],
    infos: &HashMap<String, ModInfo>,
    index: &ModuleIndex,
    tree: &RootfsTree,
    all_aliases: &mut Option<Vec<(String, String)>>,
) -> Result<Vec<String>, KernelModulesError> {
    fn visit(
        name: &str,
        infos: &HashMap<String, ModInfo>,
        before: &HashMap<&str, Vec<String>>,
        done: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !infos.contains_key(name) || !done.insert(name.to_string()) {
            return;
        }
        for soft in &before[name] {
            visit(soft, infos, before, done, order);
        }
        for dependency in &infos[name].depends {
            visit(dependency, infos, before, done, order);
        }
        order.push(name.to_string());
    }
    let mut before: HashMap<&str, Vec<String>> = HashMap::new();
    for name in selected {
        let mut list = Vec::new();
        for soft in &infos[name].softdep_pre {
            if let Soft::Modules(names) = index.resolve_soft(tree, soft, all_aliases)? {
                list.extend(names);
            }
        }
        before.insert(name.as_str(), list);
    }
    let mut done = HashSet::new();
    let mut order = Vec::new();
    for name in requested {
        visit(name, infos, &before, &mut done, &mut order);
    }
    Ok(order)
}

/// Removes directories below `top` that hold nothing any more.
fn prune_empty_dirs(tree: &mut RootfsTree, top: &str) -> Result<(), KernelModulesError> {
    let dirs: Vec<String> = tree
        .iter_under(top)
        .filter(|(_, node)| node.kind == EntryKind::Dir)
        .map(|(path, _)| path.to_string())
        .collect();
    // Deepest first: a child sorts after its parent.
    for dir in dirs.iter().rev() {
        if tree.iter_under(dir).next().is_none() {
            tree.remove(dir)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::Object;
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};

    const VERSION: &str = "6.1.0-99-amd64";

    /// A relocatable ELF like a `.ko`: just a `.modinfo` section with the
    /// given NUL-separated fields.
    fn fake_module(fields: &[&str]) -> Vec<u8> {
        let mut object = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let section = object.add_section(
            Vec::new(),
            b".modinfo".to_vec(),
            SectionKind::ReadOnlyString,
        );
        let mut data = Vec::new();
        for field in fields {
            data.extend_from_slice(field.as_bytes());
            data.push(0);
        }
        object.append_section_data(section, &data, 1);
        object.write().unwrap()
    }

    /// A kernel with a small dependency graph:
    /// top -> mid_a, mid-b; mid_a -> base; mid-b -> base, builtin_dep;
    /// top softdep pre: crypto-thing (an alias of impl_one and impl_two);
    /// lonely and other are not needed by anything.
    fn fake_kernel() -> RootfsTree {
        let mut tree = RootfsTree::new();
        tree.add_file(
            &format!("boot/vmlinuz-{VERSION}"),
            b"kernel".to_vec(),
            0o644,
            0,
            0,
        )
        .unwrap();
        let modules: [(&str, &[&str]); 8] = [
            (
                "kernel/drivers/top.ko",
                &[
                    "name=top",
                    "depends=mid_a,mid-b",
                    "softdep=pre: crypto-thing post: lonely",
                    "alias=pci:v0000XXXXd*",
                ],
            ),
            (
                "kernel/drivers/mid/mid_a.ko",
                &["name=mid_a", "depends=base", "alias=mid-alias"],
            ),
            (
                "kernel/drivers/mid/mid-b.ko",
                &["name=mid_b", "depends=base,builtin_dep"],
            ),
            ("kernel/lib/base.ko", &["name=base", "depends="]),
            (
                "kernel/crypto/impl_one.ko",
                &["name=impl_one", "depends=", "alias=crypto-thing"],
            ),
            (
                "kernel/crypto/impl-two.ko",
                &["name=impl_two", "depends=base", "alias=crypto-thi*"],
            ),
            ("kernel/misc/lonely.ko", &["name=lonely", "depends="]),
            ("kernel/other/deep/other.ko", &["name=other", "depends="]),
        ];
        for (path, fields) in modules {
            tree.add_file(
                &format!("lib/modules/{VERSION}/{path}"),
                fake_module(fields),
                0o644,
                0,
                0,
            )
            .unwrap();
        }
        let order = "kernel/lib/base.ko\nkernel/drivers/mid/mid-b.ko\nkernel/drivers/mid/mid_a.ko\nkernel/drivers/top.ko\nkernel/crypto/impl_one.ko\nkernel/crypto/impl-two.ko\nkernel/misc/lonely.ko\nkernel/other/deep/other.ko\n";
        let dir = format!("lib/modules/{VERSION}");
        tree.add_file(
            &format!("{dir}/modules.order"),
            order.as_bytes().to_vec(),
            0o644,
            0,
            0,
        )
        .unwrap();
        tree.add_file(
            &format!("{dir}/modules.builtin"),
            b"kernel/lib/builtin_dep.ko\nkernel/fs/bi.ko\n".to_vec(),
            0o644,
            0,
            0,
        )
        .unwrap();
        tree.add_file(
            &format!("{dir}/modules.builtin.modinfo"),
            b"bi.alias=fs-bi\0bi.license=GPL\0".to_vec(),
            0o644,
            0,
            0,
        )
        .unwrap();
        tree
    }

    fn text(tree: &RootfsTree, file: &str) -> String {
        match &tree
            .get(&format!("usr/lib/modules/{VERSION}/{file}"))
            .unwrap()
            .kind
        {
            EntryKind::File(c) => String::from_utf8(c.to_vec()).unwrap(),
            other => panic!("{file}: {other:?}"),
        }
    }

    #[test]
    fn selects_closure_and_writes_depmod_files() {
        let mut tree = fake_kernel();
        let selection = select_modules(&mut tree, &["top", "bi"], &[]).unwrap();
        assert_eq!(selection.kernel_version, VERSION);
        assert_eq!(selection.vmlinuz, format!("boot/vmlinuz-{VERSION}"));
        assert_eq!(selection.builtin, ["bi"]);
        assert_eq!(
            selection.module_paths.keys().collect::<Vec<_>>(),
            ["base", "impl_one", "impl_two", "mid_a", "mid_b", "top"]
        );
        // Dependencies (and softdep pre: modules) load first.
        assert_eq!(
            selection.load_order,
            ["impl_one", "base", "impl_two", "mid_a", "mid_b", "top"]
        );
        assert_eq!(selection.removed_modules, 2);
        assert!(selection.removed_bytes > 0);
        let dir = format!("usr/lib/modules/{VERSION}");
        assert!(tree.get(&format!("{dir}/kernel/misc/lonely.ko")).is_none());
        // Emptied directories go too, kept modules stay.
        assert!(tree.get(&format!("{dir}/kernel/other")).is_none());
        assert!(tree.get(&format!("{dir}/kernel/misc")).is_none());
        assert!(tree.get(&format!("{dir}/kernel/drivers/top.ko")).is_some());
        assert_eq!(
            text(&tree, "modules.dep"),
            "kernel/lib/base.ko:\n\
             kernel/drivers/mid/mid-b.ko: kernel/lib/base.ko\n\
             kernel/drivers/mid/mid_a.ko: kernel/lib/base.ko\n\
             kernel/drivers/top.ko: kernel/drivers/mid/mid-b.ko kernel/drivers/mid/mid_a.ko kernel/lib/base.ko\n\
             kernel/crypto/impl_one.ko:\n\
             kernel/crypto/impl-two.ko: kernel/lib/base.ko\n"
        );
        assert_eq!(
            text(&tree, "modules.alias"),
            "# Aliases extracted from modules themselves.\n\
             alias mid-alias mid_a\n\
             alias pci:v0000XXXXd* top\n\
             alias crypto-thing impl_one\n\
             alias crypto-thi* impl_two\n"
        );
        assert_eq!(
            text(&tree, "modules.softdep"),
            "# Soft dependencies extracted from modules themselves.\n\
             softdep top pre: crypto-thing post: lonely\n"
        );
        assert_eq!(
            text(&tree, "modules.order"),
            "kernel/lib/base.ko\nkernel/drivers/mid/mid-b.ko\nkernel/drivers/mid/mid_a.ko\nkernel/drivers/top.ko\nkernel/crypto/impl_one.ko\nkernel/crypto/impl-two.ko\n"
        );
        assert!(text(&tree, "modules.builtin").contains("bi.ko"));
    }

    #[test]
    fn folder_patterns_select_every_module_under_them_with_dependencies() {
        let mut tree = fake_kernel();
        let selection = select_modules(&mut tree, &["kernel/drivers/mid/*.ko"], &[]).unwrap();
        assert_eq!(selection.load_order, ["base", "mid_b", "mid_a"]);

        let mut tree = fake_kernel();
        let selection = select_modules(&mut tree, &["kernel/drivers/**", "lonely"], &[]).unwrap();
        assert_eq!(
            selection.module_paths.keys().collect::<Vec<_>>(),
            [
                "base", "impl_one", "impl_two", "lonely", "mid_a", "mid_b", "top"
            ]
        );
        assert!(
            selection
                .load_order
                .ends_with(&["top".to_string(), "lonely".to_string()])
        );
    }

    #[test]
    fn a_star_stays_within_one_folder() {
        let mut tree = fake_kernel();
        let selection = select_modules(&mut tree, &["kernel/other/*"], &[]);
        assert!(matches!(selection, Err(KernelModulesError::NoMatch { .. })));
        let mut tree = fake_kernel();
        let selection = select_modules(&mut tree, &["kernel/other/**"], &[]).unwrap();
        assert_eq!(selection.load_order, ["other"]);
    }

    #[test]
    fn a_pattern_matching_nothing_is_named() {
        let mut tree = fake_kernel();
        let error = select_modules(
            &mut tree,
            &["top", "kernel/drivers/scsi/megaraid/*.ko"],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            format!(
                "kernel {VERSION}: pattern kernel/drivers/scsi/megaraid/*.ko matches no module"
            )
        );
        let error = select_modules(&mut tree, &["kernel/[drivers"], &[]).unwrap_err();
        assert!(
            matches!(error, KernelModulesError::BadPattern { .. }),
            "{error}"
        );
    }

    #[test]
    fn on_demand_drivers_are_kept_with_dependencies_but_not_loaded() {
        let mut tree = fake_kernel();
        let selection = select_modules(&mut tree, &["lonely"], &["kernel/drivers/mid/**"]).unwrap();
        assert_eq!(selection.load_order, ["lonely"]);
        assert_eq!(
            selection.module_paths.keys().collect::<Vec<_>>(),
            ["base", "lonely", "mid_a", "mid_b"]
        );
        // udev finds them by modalias.
        assert!(text(&tree, "modules.alias").contains("alias mid-alias mid_a\n"));
    }

    #[test]
    fn dashes_and_underscores_are_the_same_name() {
        let mut tree = fake_kernel();
        let selection = select_modules(&mut tree, &["mid_b", "mid-a"], &[]).unwrap();
        assert_eq!(selection.load_order, ["base", "mid_b", "mid_a"]);
    }

    #[test]
    fn unknown_module_lists_close_matches() {
        let mut tree = fake_kernel();
        let error = select_modules(&mut tree, &["mid_c"], &[]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("no module named mid_c"), "{text}");
        assert!(text.contains("mid_a") && text.contains("mid_b"), "{text}");
        // Nothing was removed on failure.
        assert!(
            tree.get(&format!("usr/lib/modules/{VERSION}/kernel/misc/lonely.ko"))
                .is_some()
        );
    }

    #[test]
    fn missing_dependency_and_broken_elf_are_named() {
        let mut tree = fake_kernel();
        let dir = format!("usr/lib/modules/{VERSION}/kernel");
        tree.add_file(
            &format!("{dir}/x.ko"),
            fake_module(&["depends=nowhere"]),
            0o644,
            0,
            0,
        )
        .unwrap();
        tree.add_file(&format!("{dir}/y.ko"), b"not an elf".to_vec(), 0o644, 0, 0)
            .unwrap();
        let error = select_modules(&mut tree.clone(), &["x"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.ko") && error.contains("nowhere"),
            "{error}"
        );
        let error = select_modules(&mut tree, &["y"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("y.ko") && error.contains(".modinfo"),
            "{error}"
        );
    }

    #[test]
    fn unresolved_softdep_is_reported_and_cycles_refused() {
        let mut tree = fake_kernel();
        let dir = format!("usr/lib/modules/{VERSION}/kernel");
        tree.add_file(
            &format!("{dir}/s.ko"),
            fake_module(&["softdep=pre: fs-bi ghost"]),
            0o644,
            0,
            0,
        )
        .unwrap();
        tree.add_file(
            &format!("{dir}/c1.ko"),
            fake_module(&["depends=c2"]),
            0o644,
            0,
            0,
        )
        .unwrap();
        tree.add_file(
            &format!("{dir}/c2.ko"),
            fake_module(&["depends=c1"]),
            0o644,
            0,
            0,
        )
        .unwrap();
        let selection = select_modules(&mut tree.clone(), &["s"], &[]).unwrap();
        assert_eq!(selection.unresolved_softdeps, ["s: ghost"]);
        assert_eq!(selection.load_order, ["s"]);
        let error = select_modules(&mut tree, &["c1"], &[]).unwrap_err();
        assert!(matches!(error, KernelModulesError::Cycle { .. }), "{error}");
    }

    #[test]
    fn needs_exactly_one_kernel_with_its_image() {
        let mut tree = fake_kernel();
        tree.remove(&format!("boot/vmlinuz-{VERSION}")).unwrap();
        assert!(matches!(
            select_modules(&mut tree, &["top"], &[]),
            Err(KernelModulesError::NoVmlinuz { .. })
        ));
        let mut tree = fake_kernel();
        tree.add_dir("usr/lib/modules/5.10.0-1-amd64", 0o755, 0, 0)
            .unwrap();
        assert!(matches!(
            select_modules(&mut tree, &["top"], &[]),
            Err(KernelModulesError::SeveralKernels { .. })
        ));
        assert!(matches!(
            select_modules(&mut RootfsTree::new(), &["top"], &[]),
            Err(KernelModulesError::NoKernel)
        ));
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert!(wildcard_matches("pci:v*d0001", "pci:v1234d0001"));
        assert!(!wildcard_matches("pci:v*d0001", "pci:v1234d0002"));
    }

    /// The hypervisor's module list against the real bookworm kernel: the
    /// chains from the field notes, and `modules.dep` compared with depmod's
    /// when the host has it.
    #[test]
    fn real_kernel_closure_matches_field_notes() {
        let Some(mut tree) = real_kernel_tree() else {
            return;
        };
        let wanted = [
            "iscsi_tcp",
            "sd_mod",
            "dm_multipath",
            "dm_round_robin",
            "dm_service_time",
            "virtio_net",
            "virtio_blk",
            "virtio_pci",
            "virtio_console",
            "bridge",
            "tun",
            "ext4",
        ];
        let started = std::time::Instant::now();
        let selection = select_modules(&mut tree, &wanted, &[]).unwrap();
        println!(
            "selected {} modules in {:?}: {:?}",
            selection.load_order.len(),
            started.elapsed(),
            selection.load_order
        );
        println!(
            "removed {} modules, {} bytes",
            selection.removed_modules, selection.removed_bytes
        );
        let position = |name: &str| {
            selection
                .load_order
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{name} not selected"))
        };
        for (module, needs) in [
            (
                "iscsi_tcp",
                &[
                    "libiscsi_tcp",
                    "libiscsi",
                    "scsi_transport_iscsi",
                    "scsi_mod",
                ][..],
            ),
            ("sd_mod", &["t10_pi", "crc_t10dif", "crc64_rocksoft"]),
            ("virtio_net", &["net_failover"]),
            ("net_failover", &["failover"]),
            ("bridge", &["llc", "stp"]),
            ("dm_multipath", &["dm_mod"]),
            ("ext4", &["jbd2", "mbcache", "crc16"]),
        ] {
            for need in needs {
                assert!(
                    position(need) < position(module),
                    "{need} must load before {module}"
                );
            }
        }
        // ext4's softdep pre: crypto-crc32c pulls in an implementation.
        assert!(selection.load_order.iter().any(|n| n.starts_with("crc32c")));
        let dep = text_in(&tree, &selection, "modules.dep");
        println!("{dep}");
        if let Some(reference) = depmod_reference(&tree, &selection) {
            assert_eq!(dep, reference);
        } else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "depmod is missing: run scripts/host-setup (it installs kmod)"
            );
            eprintln!("SKIPPED: depmod is not installed: modules.dep not compared with depmod's");
        }
    }

    /// A tree holding the hypervisor's kernel package from applbuild's
    /// cache (`None`, after saying so, when it is not cached outside CI).
    fn real_kernel_tree() -> Option<RootfsTree> {
        use crate::deb_archive::DebArchive;
        use crate::deb_archive::tests::data_entries;
        use crate::rootfs::PathFilter;
        let kernel = applbuild_testdata::or_skip(applbuild_testdata::kernel_deb())?;
        let deb = DebArchive::open(&kernel.path).unwrap();
        let mut tree = RootfsTree::new();
        tree.insert_package(
            "linux-image",
            data_entries(&deb).unwrap(),
            &PathFilter::default(),
        )
        .unwrap();
        Some(tree)
    }

    fn text_in(tree: &RootfsTree, selection: &ModuleSelection, file: &str) -> String {
        match &tree
            .get(&format!("{}/{file}", selection.modules_dir))
            .unwrap()
            .kind
        {
            EntryKind::File(c) => String::from_utf8(c.to_vec()).unwrap(),
            other => panic!("{file}: {other:?}"),
        }
    }

    /// Runs the host's depmod over the kept modules written to a scratch
    /// directory.
    fn depmod_reference(tree: &RootfsTree, selection: &ModuleSelection) -> Option<String> {
        let depmod = ["/usr/sbin/depmod", "/sbin/depmod"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let root = tempfile::tempdir().unwrap();
        let base = root
            .path()
            .join("lib/modules")
            .join(&selection.kernel_version);
        for (path, node) in tree.iter_under(&selection.modules_dir) {
            let relative = &path[selection.modules_dir.len() + 1..];
            if relative.starts_with("modules.dep")
                || relative.starts_with("modules.alias")
                || relative.starts_with("modules.softdep")
            {
                continue;
            }
            let target = base.join(relative);
            match &node.kind {
                EntryKind::Dir => std::fs::create_dir_all(&target).unwrap(),
                EntryKind::File(c) => std::fs::write(&target, c).unwrap(),
                _ => {}
            }
        }
        let status = std::process::Command::new(depmod)
            .arg("-b")
            .arg(root.path())
            .arg(&selection.kernel_version)
            .status()
            .unwrap();
        assert!(status.success());
        Some(std::fs::read_to_string(base.join("modules.dep")).unwrap())
    }
}
